"""`polyprune report` and `polyprune compare` on a small real MLflow record.

The record is made here, not by `polyprune sweep`: the real engine prunes and
evaluates the tiny Llama, and `log_cell` writes each result with the MLflow client
exactly as docs/record.md and orchestrator/names.py name things (parent
tagged polyprune.role, children with polyprune.cell_id / polyprune.kind, params,
ppl.* metrics, result.json and masks.safetensors artifacts).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import link_inputs
from orchestrator import cli, tracking
from tasks.analysis.overlap import jaccard_total, mask_overlap
from tasks.pruning.masks import load_masks

EVAL = ["en", "de", "sw"]
SEQLEN, NSAMPLES = 32, 8
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two spinning torch threads on a shared 2-core machine make tiny matmuls slower, not faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Recorder:
    """Prunes / evaluates the tiny model and logs runs into one experiment."""

    def __init__(self, root: Path, model_path, data, name: str, role: str = "sweep", parent_params=None):
        from tasks.api import load_model, snapshot

        self.uri = f"sqlite:///{root}/mlflow.db"
        self.root, self.data, self.name, self.model_path = root, str(data), name, str(model_path)
        self.cl = tracking.client(self.uri, create=True)
        self.exp = tracking.experiment_id(self.cl, name, self.uri, create=True)
        self.parent = self.cl.create_run(self.exp, run_name=name, tags={tracking.ROLE: role, tracking.SWEEP: name}).info.run_id
        tracking.log_params(self.cl, self.parent, parent_params or {})
        self.cl.set_terminated(self.parent, "FINISHED")
        self.model, self.tok = load_model(self.model_path)
        self.snap = snapshot(self.model)
        self.n = 0

    def log_cell(self, method="wanda", sparsity="0.5", calib="en", seed=0, schedule="uniform", hp=None, masks=True,
                 lmeval=(), tags=None):
        """One child run; method 'dense' is the baseline (sparsity 0, no masks)."""
        from tasks.api import PruneSpec, perplexity, ppl_metrics, prune, restore, save_outputs

        restore(self.model, self.snap)
        self.n += 1
        kind = "baseline" if method == "dense" else "prune"
        params = {"model": self.model_path, "dtype": "auto", "eval.ppl_languages": ",".join(EVAL), "eval.ppl_data": self.data}
        metrics, art = {}, self.root / f"cell{self.n}"
        if kind == "prune":
            res = prune(self.model, self.tok, PruneSpec(model=self.model_path, method=method, sparsity=sparsity, calib=calib,
                                                        data=self.data, nsamples=NSAMPLES, seqlen=SEQLEN, seed=seed,
                                                        schedule=schedule, hp=hp or {}), progress=False)
            c = res.result["config"]
            params.update({k: c[k] for k in ("method", "sparsity", "calib", "data", "nsamples", "seqlen", "seed", "schedule")}, **c["hp"])
            metrics.update({"sparsity.actual": res.result["sparsity_actual"], "time.prune_s": res.result["time_prune_s"]})
            save_outputs(art, self.model, self.tok, res, save_model=False)
            if not masks:
                (art / "masks.safetensors").unlink()
        else:
            params.update(method="dense", sparsity="0")
            metrics["sparsity.actual"] = 0.0
        metrics.update(ppl_metrics(perplexity(self.model, self.tok, EVAL, data=self.data, seqlen=SEQLEN, nsamples=4)))
        if lmeval:
            from tasks.evaluation.lmeval import run_lmeval

            out = run_lmeval(self.model, self.tok, list(lmeval), limit=6)
            metrics.update({k: v for k, v in out["metrics"].items() if isinstance(v, float)})
        metrics["time.eval_s"] = 0.1
        run = self.cl.create_run(self.exp, run_name=f"{kind} {method} {sparsity} {calib} s{seed}", tags={
            tracking.PARENT: self.parent, tracking.SWEEP: self.name, tracking.CELL: f"cell{self.n:04d}", "polyprune.kind": kind,
            **(tags or {})}).info.run_id
        tracking.log_params(self.cl, run, params)
        tracking.log_metrics(self.cl, run, metrics)
        if art.exists():
            self.cl.log_artifacts(run, str(art))
        self.cl.set_terminated(run, "FINISHED")
        return run


def report(argv, capsys=None):
    rc = cli.main(["report", *argv])
    return rc, (capsys.readouterr() if capsys else None)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_llama, text_dir):
    """dense; wanda 0.5 x {en, sw, en+sw} (en with two seeds); wanda 0.7 x {en, sw}; wanda+owl 0.5 en."""
    rec = Recorder(tmp_path_factory.mktemp("sweep"), tiny_llama, text_dir, "tiny-sweep")
    lm = ("polyprune_cont_en", "polyprune_cont_sw")
    runs = {"dense": rec.log_cell("dense", lmeval=lm)}
    for calib in ("en", "sw", "en,sw"):
        runs[f"0.5/{calib}"] = rec.log_cell(sparsity="0.5", calib=calib, lmeval=lm)
    runs["0.5/en/seed1"] = rec.log_cell(sparsity="0.5", calib="en", seed=1)
    for calib in ("en", "sw"):
        runs[f"0.7/{calib}"] = rec.log_cell(sparsity="0.7", calib=calib)
    runs["owl"] = rec.log_cell(sparsity="0.5", calib="en", schedule="owl")
    rec.runs = runs
    rec.out = rec.root / "report"
    assert report([rec.name, "--out", str(rec.out), "--tracking-uri", rec.uri])[0] == 0
    return rec


def read_csv(path) -> dict:
    with open(path) as f:
        rows = list(csv.reader(f))
    return {r[0]: dict(zip(rows[0][1:], (float(v) if v else None for v in r[1:]))) for r in rows[1:]}


def test_report_folder_has_html_and_figures(sweep):
    files = {p.name for p in sweep.out.iterdir()}
    for prefix in ("ppl_", "ppl_rel_", "acc_", "acc_rel_", "overlap_", "overlap_depth_", "overlap_linear_", "blocks_", "curve_ppl_"):
        assert any(f.startswith(prefix) and f.endswith(".png") or f.startswith(prefix) and f.endswith(".csv") for f in files), prefix
    assert "report.html" in files and "runs.csv" in files
    html = (sweep.out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == sum(f.endswith(".png") for f in files)
    assert "http://" not in html and "https://" not in html  # nothing fetched: opens offline
    # wanda with the owl schedule is its own group, so its block panel shows a non-uniform target
    assert any("schedule=owl" in f for f in files)


def test_heatmap_values_equal_the_runs_metrics(sweep):
    cl = sweep.cl
    m = {k: cl.get_run(v).data.metrics for k, v in sweep.runs.items()}
    [ppl_csv] = [p for p in sweep.out.glob("ppl_*wanda_schedule=uniform_0.5.csv") if "_rel_" not in p.name]
    absolute = read_csv(ppl_csv)
    relative = read_csv(ppl_csv.with_name(ppl_csv.name.replace("ppl_", "ppl_rel_", 1)))
    assert list(absolute) == ["en", "sw", "en=0.5,sw=0.5"]  # single languages first, in evaluation order
    for lang in EVAL + ["mean"]:
        key = f"ppl.{lang}"
        assert absolute["sw"][lang] == pytest.approx(m["0.5/sw"][key], rel=1e-9)
        assert absolute["en=0.5,sw=0.5"][lang] == pytest.approx(m["0.5/en,sw"][key], rel=1e-9)
        # two seeds of en: their mean
        assert absolute["en"][lang] == pytest.approx((m["0.5/en"][key] + m["0.5/en/seed1"][key]) / 2, rel=1e-9)
        assert relative["sw"][lang] == pytest.approx(m["0.5/sw"][key] / m["dense"][key], rel=1e-9)
    [acc_rel] = list(sweep.out.glob("acc_rel_*wanda_schedule=uniform_0.5.csv"))
    acc = read_csv(acc_rel)
    key = next(k for k in m["dense"] if k.startswith("lmeval.polyprune_cont_sw.") and k.endswith(".acc"))
    assert acc["sw"]["polyprune_cont_sw"] == pytest.approx(m["0.5/sw"][key] - m["dense"][key], abs=1e-12)


def test_mask_jaccard(sweep, tmp_path):
    cl = sweep.cl
    path = {k: Path(cl.download_artifacts(sweep.runs[k], "masks.safetensors", str(tmp_path / k.replace("/", "_"))))
            for k in ("0.5/en", "0.5/sw")}
    assert jaccard_total(mask_overlap(path["0.5/en"], path["0.5/en"])) == 1.0
    rows = mask_overlap(path["0.5/en"], path["0.5/sw"])
    assert 0 < jaccard_total(rows) < 1
    # the packed-byte arithmetic equals set arithmetic on the unpacked masks
    a, b = load_masks(path["0.5/en"]), load_masks(path["0.5/sw"])
    for r in rows:
        pa, pb = ~a[r["name"]], ~b[r["name"]]
        assert r["intersection"] == int((pa & pb).sum()) and r["union"] == int((pa | pb).sum())
        assert r["pruned_a"] == int(pa.sum())
    assert {r["linear"] for r in rows} >= {"q_proj", "down_proj"} and {r["block"] for r in rows} == {0, 1}
    # the report's matrix holds the same value; its diagonal is the two en seeds (noise floor)
    [ov] = list(sweep.out.glob("overlap_tiny*wanda_schedule=uniform_0.5.csv"))
    matrix = read_csv(ov)
    assert matrix["en"]["sw"] == pytest.approx(jaccard_total(rows))
    assert 0 < matrix["en"]["en"] < 1 and matrix["sw"]["sw"] == 1.0


def test_figures_are_artifacts_of_the_parent_run(sweep):
    logged = {Path(a.path).name for a in sweep.cl.list_artifacts(sweep.parent, "report")}
    assert logged == {p.name for p in sweep.out.iterdir()}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
def test_html_renders_in_headless_chromium(sweep, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600", (sweep.out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 0.05  # not a blank page
    # the first heatmap (red-yellow-green cells) is on screen: many saturated, non-grey pixels
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 0.3).mean() > 0.02


@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_llama, text_dir):
    """A search-shaped record: trials tagged polyprune.trial with different en/sw mixes."""
    objectives = json.dumps([{"metric": "ppl.sw", "direction": "minimize"}, {"metric": "ppl.mean", "direction": "minimize"}])
    rec = Recorder(tmp_path_factory.mktemp("search"), tiny_llama, text_dir, "tiny-search", role="search",
                   parent_params={"objectives": objectives})
    rec.log_cell("dense")
    for i, calib in enumerate(["en=0.5,sw=0.5", "sw", "en=0.8,sw=0.2", "en=0.3,sw=0.7", "en=0.1,sw=0.9"]):
        rec.log_cell(method="mwanda", calib=calib, hp={"lambda_var": 0.5 + 0.25 * i}, tags={"polyprune.trial": str(i)})
    return rec


def test_search_report(search, tmp_path):
    out = tmp_path / "r"
    assert report([search.name, "--out", str(out), "--tracking-uri", search.uri])[0] == 0
    files = {p.name for p in out.iterdir()}
    assert {"search_history_ppl.sw.png", "search_history_ppl.mean.png", "search_pareto.png", "search_best_vs_baselines.png",
            "search_importances.png", "search_trials.csv"} <= files
    assert not any(f.startswith("ppl_") for f in files)  # trials are not a calibration grid


def test_compare(sweep, capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "compare", ("orchestrator.cli.compare", "two runs side by side"))
    a, b = sweep.runs["0.5/en"], sweep.runs["0.5/sw"]
    capsys.readouterr()
    assert cli.main(["compare", a, b, "--tracking-uri", sweep.uri]) == 0
    out = capsys.readouterr().out
    assert "calib" in out and "en=1" in out and "sw=1" in out and "ppl.sw" in out
    assert "mask overlap" in out and "q_proj" in out and "down_proj" in out
    assert cli.main(["compare", a, sweep.runs["dense"], "--tracking-uri", sweep.uri]) == 0
    assert "no mask overlap" in capsys.readouterr().out
    assert cli.main(["compare", a, "nope", "--tracking-uri", sweep.uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RUN_B" in err


def test_bad_input_is_one_line_exit_2(sweep, tmp_path, tiny_llama, text_dir, capsys):
    capsys.readouterr()
    out = tmp_path / "never"
    rc, cap = report(["no-such-sweep", "--out", str(out), "--tracking-uri", sweep.uri], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "no-such-sweep" in cap.err and "tiny-sweep" in cap.err
    # an empty sweep: a parent run, no finished cells
    cl = sweep.cl
    exp = tracking.experiment_id(cl, "empty", sweep.uri, create=True)
    cl.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "empty"})
    rc, cap = report(["empty", "--out", str(out), "--tracking-uri", sweep.uri], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "no finished runs" in cap.err
    # a pruned run whose masks are missing
    (tmp_path / "nomask").mkdir()
    rec = Recorder(tmp_path / "nomask", tiny_llama, text_dir, "nomask")
    rec.log_cell(calib="en", masks=False)
    capsys.readouterr()
    rc, cap = report(["nomask", "--out", str(out), "--tracking-uri", rec.uri], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "masks.safetensors" in cap.err
    assert not out.exists()  # nothing written on bad input
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    rc, cap = report(["tiny-sweep", "--out", str(tmp_path / "busy"), "--tracking-uri", sweep.uri], capsys)
    assert rc == 2 and "neither empty nor an earlier report" in cap.err


def test_rerun_replaces_an_earlier_report(sweep, tmp_path):
    out = shutil.copytree(sweep.out, tmp_path / "again")
    assert report([sweep.name, "--out", str(out), "--tracking-uri", sweep.uri, "--no-log", "--no-overlap"])[0] == 0
    assert not list(out.glob("overlap_*")) and (out / "report.html").exists()


def test_report_of_a_real_tiny_sweep(ray_local, tmp_path, tiny_llama, text_dir):
    """The record `polyprune sweep` writes is the one the report reads."""
    import yaml

    link_inputs(tmp_path, tiny_llama, text_dir)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "real", "models": ["./tiny"], "methods": ["wanda"], "sparsities": [0.5], "seeds": [0],
        "calibration": {"languages": ["en", "sw"], "data": "./text", "nsamples": 4, "seqlen": 32},
        "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 4}}, "resources": {"cpu_workers": 1}}))
    assert cli.main(["sweep", str(path)]) == 0
    assert report([str(path), "--out", str(tmp_path / "r")])[0] == 0
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = cl.search_runs([cl.get_experiment_by_name("real").experiment_id])
    metric = {r.data.params.get("calib", "dense"): r.data.metrics for r in runs if "polyprune.cell_id" in r.data.tags}
    [ppl] = [p for p in (tmp_path / "r").glob("ppl_*.csv") if "_rel_" not in p.name]
    assert read_csv(ppl)["sw"]["en"] == pytest.approx(metric["sw=1"]["ppl.en"], rel=1e-9)
    [ov] = [p for p in (tmp_path / "r").glob("overlap_*.csv") if "_blocks_" not in p.name]
    assert 0 < read_csv(ov)["en"]["sw"] < 1
    [parent] = [r for r in runs if r.data.tags.get(tracking.ROLE) == "sweep"]
    assert "report.html" in {Path(a.path).name for a in cl.list_artifacts(parent.info.run_id, "report")}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
