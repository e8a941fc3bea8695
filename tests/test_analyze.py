"""`polyprune analyze` on a small real sweep: `polyprune sweep` of the tiny Llama on the
session's Ray with a sqlite MLflow store, then the analysis end to end (scalars on the
runs, figures and CSVs on the parent run and in --out, the report's section rendered in
headless Chromium), and its bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import write_text_folder
from helpers import child_runs, write_yaml
from orchestrator import tracking
from orchestrator.cli import main
from orchestrator.report.analysis_figures import INDEX, SECTION

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LANGS = ["en", "sw"]
SWEEP = {
    "name": "an", "models": ["./tiny"], "methods": ["wanda", "sparsegpt"], "sparsities": [0.5],
    "calibration": {"languages": LANGS, "data": "./text", "nsamples": 4, "seqlen": 32},
    "seeds": [0], "evaluation": {"ppl": {"languages": LANGS, "nsamples": 2}}, "resources": {"cpu_workers": 1},
}
ARGS = ["--nsamples", "3", "--seqlen", "64"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_llama, ray_local):
    """The sweep's folder, run once: dense + wanda and sparsegpt calibrated in en and in sw."""
    root = tmp_path_factory.mktemp("analyze")
    (root / "tiny").symlink_to(tiny_llama)
    text = write_text_folder(root / "text", langs=LANGS)
    # zh: present in the source, but its held-out text is shorter than one window
    (text / "zh.txt").write_text("\n\n".join(["的一是不了人我在有他"] * 12) + "\n", encoding="utf-8")
    (text / "zh.test.txt").write_text("的一是\n", encoding="utf-8")
    path = write_yaml(root / "sweep.yaml", SWEEP)
    assert main(["sweep", str(path)]) == 0
    return root


@pytest.fixture(scope="module")
def analysed(swept):
    out = swept / "analysis"
    assert main(["analyze", str(swept / "sweep.yaml"), "--out", str(out), *ARGS]) == 0
    return out


def runs_by(db: Path) -> dict:
    return {(r.data.params["method"], r.data.params.get("calib", "")): r for r in child_runs(db, "an")}


def test_scalars_land_on_the_runs_and_match_the_tasks_api(swept, analysed, capfd):
    from mlflow import MlflowClient

    from orchestrator.models import run_file
    from tasks.analysis.inside import AnalysisSpec, analyze
    from tasks.models import load_model

    runs = runs_by(swept / "mlflow.db")
    for calib in ("en=1", "sw=1"):
        m = runs[("wanda", calib)].data.metrics
        for lang in LANGS:
            assert 0 < m[f"analysis.cka.{lang}"] <= 1 and -1 <= m[f"analysis.cosine.{lang}"] <= 1
            assert 0 <= m[f"analysis.shared_share.{lang}"] + m[f"analysis.specific_share.{lang}"] <= 1 + 1e-9
        assert m["analysis.lape_kept.all"] == 0.5  # Wanda zeroes half of every row: half of every down column's weights
    # nothing was analysed (or logged) for the dense run or the SparseGPT runs without saved models
    assert not any(k.startswith("analysis.") for k in runs[("dense", "")].data.metrics)
    assert not any(k.startswith("analysis.") for k in runs[("sparsegpt", "en=1")].data.metrics)
    # the logged figures are the tasks API's on the same masks, text and settings
    run = runs[("wanda", "sw=1")]
    cl = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")  # the masks live in the run's logged model
    masks = str(run_file(cl, run.info.run_id, run.data.tags, "masks.safetensors", swept / "dl"))
    model, tok = load_model(str(swept / "tiny"))
    spec = AnalysisSpec(languages=LANGS, data=str(swept / "text"), nsamples=3, seqlen=64)
    direct = analyze(model, tok, {"r": masks}, spec, progress=False)["runs"]["r"]["metrics"]
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("analysis.")}
    assert logged.keys() == direct.keys()
    assert all(math.isclose(logged[k], direct[k], rel_tol=1e-9, abs_tol=1e-12) for k in direct)


def test_findings_are_the_few_lines_the_demo_prints():
    from orchestrator.report.analysis import findings

    def row(calib, cka_en, cka_sw, kept_sw):
        return {"model": "tiny", "variant": "wanda", "sparsity": "0.5", "calib": calib, "analysis.cka.en": cka_en,
                "analysis.cka.sw": cka_sw, "analysis.lape_kept.sw": kept_sw, "analysis.lape_kept.all": 0.5}

    # en has no specific neurons (no lape_kept.en); sw=1 ran with two seeds: their means
    rows = [row("en=1", 0.9, 0.7, 0.2), row("sw=1", 0.8, 0.8, 0.4), row("sw=1", 0.8, 0.9, 0.2)]
    assert findings(rows, ["en", "sw"]) == [
        "  tiny wanda 0.5 calibrated in en=1: specific neurons kept sw 0.200 (all neurons 0.500); CKA en 0.900 sw 0.700",
        "  tiny wanda 0.5 calibrated in sw=1: specific neurons kept sw 0.300 (all neurons 0.500); CKA en 0.800 sw 0.850",
        "  calibrating in a language kept its own specific neurons best for 1 of 1 (sw)",
        "  calibrating in a language gave the highest CKA for 2 of 2 (en, sw)"]


def test_figures_and_csvs_in_out_and_on_the_parent(swept, analysed):
    from mlflow import MlflowClient

    index = json.loads((analysed / INDEX).read_text())
    pngs = [f for f, _ in index["figures"]]
    # per group (wanda 0.5 only): kept heatmap, a CKA heatmap per calibration, CKA by depth, subspace shares
    assert len(pngs) == 5 and all((analysed / f).stat().st_size > 5000 for f in pngs)
    rows = (analysed / "analysis_kept.csv").read_text().splitlines()
    assert rows[0].startswith("run_id,model,variant,sparsity,calib,seed,lang,neurons,down_kept,in_kept")
    assert len(rows) == 1 + 2 * 3  # 2 wanda runs x (en, sw, all)
    layers = (analysed / "analysis_layers.csv").read_text().splitlines()
    assert len(layers) == 1 + 2 * 2 * 2  # runs x languages x blocks
    cl = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    parent = next(r for r in cl.search_runs([cl.get_experiment_by_name("an").experiment_id]) if r.data.tags.get(tracking.ROLE) == "sweep")
    logged = {a.path for a in cl.list_artifacts(parent.info.run_id, "analysis")}
    assert {f"analysis/{f}" for f in [*pngs, INDEX, "analysis_kept.csv", "analysis_layers.csv"]} <= logged


def test_skips_sparsegpt_without_saved_model_with_a_message(swept, tmp_path, capfd):
    assert main(["analyze", "an", "--tracking-uri", f"sqlite:///{swept / 'mlflow.db'}", "--out", str(tmp_path / "a"),
                 "--no-log", "--languages", "en", *ARGS]) == 0
    err = capfd.readouterr().err
    assert err.count("skipped run") == 2 and "sparsegpt changes the kept weights" in err
    assert (tmp_path / "a" / "analysis_runs.csv").read_text().count("\n") == 1 + 2


def test_report_shows_the_section_and_renders(swept, analysed, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(swept / "sweep.yaml"), "--out", str(out), "--no-overlap", "--no-log"]) == 0
    html = (out / "report.html").read_text()
    assert SECTION in html and html.count("_cka_") >= 3 and (out / "analysis_kept.csv").exists()
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian package chromium)")
    from matplotlib.image import imread

    # only the analysis section: a page of its figures alone
    page = tmp_path / "section.html"
    page.write_text(html[html.index(f">{SECTION}<") - 20:], encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], check=True, capture_output=True, timeout=120)
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200) and img.std() > 0.05
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 0.3).mean() > 0.02  # the viridis heatmap is on screen


def test_report_without_analysis_has_no_section(tmp_path):
    from orchestrator.report.analysis_figures import report_items

    assert report_items(None, None, tmp_path, tmp_path) == []


def one_line(capsys, field: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"polyprune analyze: {field}:"), err


def test_bad_input_one_line_exit_2_nothing_written(swept, tmp_path, capsys):
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    out = tmp_path / "o"
    for argv, field in ((["nope"], "NAME"), (["an", "--languages", "xx"], "languages"),
                        (["an", "--languages", "en,zh"], "languages"), (["an", "--nsamples", "0"], "nsamples")):
        assert main(["analyze", *argv, "--tracking-uri", uri, "--out", str(out), "--seqlen", "64"]) == 2
        one_line(capsys, field)
        assert not out.exists()
    # a pruned run whose masks are missing
    cl = tracking.client(uri, create=False)
    exp = tracking.experiment_id(cl, "nomasks", uri, create=True)
    parent = cl.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "nomasks"}).info.run_id
    run = cl.create_run(exp, tags={tracking.PARENT: parent, tracking.SWEEP: "nomasks", tracking.CELL: "c1"}).info.run_id
    tracking.log_params(cl, run, {"model": str(swept / "tiny"), "method": "wanda", "sparsity": "0.5", "calib": "en=1",
                                  "eval.ppl_languages": "en", "eval.ppl_data": str(swept / "text")})
    cl.set_terminated(run, "FINISHED")
    assert main(["analyze", "nomasks", "--tracking-uri", uri, "--out", str(out)]) == 2
    one_line(capsys, "masks")
    assert not out.exists() and not cl.list_artifacts(parent)
    assert not any(k.startswith("analysis.") for k in cl.get_run(run).data.metrics)
