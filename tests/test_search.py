"""`polyprune search` on a real local Ray (the session's `ray_local`), a real sqlite
Optuna storage and a real sqlite MLflow store in tmp folders, with the tiny model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, child_runs, kill_9_when, sqlite_rows, write_yaml
from orchestrator.cli import main

SEARCH = {
        "name": "s",
        "model": "./tiny",
        "method": "mwanda",
        "sparsity": 0.5,
        "calibration": {"languages": ["en", "de", "sw"], "data": "./text", "nsamples": 6, "seqlen": 32},
        "evaluation": {"ppl": {"languages": ["en", "de", "sw"], "nsamples": 4}},
        "space": "mwanda_mix",
        "objectives": [{"metric": "ppl.sw", "direction": "minimize"}, {"metric": "ppl.mean", "direction": "minimize"}],
        "n_trials": 4,
        "parallel": 2,
        "sampler_seed": 0,
        "confirm": False,  # the confirmation stage has its own tests (test_confirm.py)
}


def write_search(folder: Path, **over) -> Path:
    return write_yaml(folder / "search.yaml", SEARCH, **over)


def trials(folder: Path, name: str = "s") -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}").get_trials()


def trial_runs(folder: Path, name: str = "s") -> list:
    return child_runs(folder / "mlflow.db", name, "polyprune.trial")


def held_out_runs(folder: Path, name: str = "s") -> list:
    """The held-out runs (kind held-out): a reported trial's test split, tagged with its number."""
    return child_runs(folder / "mlflow.db", name, "polyprune.held_out")


def optuna_study(folder: Path, name: str = "s"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")


def mix_of(calib: str) -> dict[str, float]:
    return {k: float(v) for k, v in (p.split("=") for p in calib.split(","))}


# ---------------------------------------------------------------- spaces (no Ray)


def test_every_shipped_space_loads():
    from search_spaces.space import load_space, shipped

    assert {"mwanda_mix", "mwanda_schedule", "mwanda_full"} <= set(shipped())
    for name in shipped():
        space = load_space(name)
        dists = space.distributions(["en", "sw"])
        assert dists, name
    assert set(load_space("mwanda_mix").distributions(["en", "sw"])) == {"mix.en", "mix.sw", "lambda_var", "lambda_prob"}


@pytest.mark.parametrize("name", ["mwanda_mix", "mwanda_schedule", "mwanda_full"])
def test_sampled_points_are_valid(name):
    """Mixes are simplex points; per-block profiles keep the target mean and stay in [0, 1)."""
    import optuna

    from search_spaces.space import load_space, sample

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    langs, kinds = ["en", "de", "sw", "zh"], set()
    for target in (0.5, 0.7):
        for _ in range(40):
            trial = study.ask(space.distributions(langs))
            p = sample(trial, space, langs, target, n_blocks=7)
            if space.mix:
                assert set(p.mix) == set(langs) and all(w >= 0 for w in p.mix.values())
                assert math.isclose(sum(p.mix.values()), 1.0, abs_tol=1e-12)
            if p.profile is not None:
                assert len(p.profile) == 7 and all(0 <= s < 1 for s in p.profile)
                assert abs(sum(p.profile) / 7 - target) < 1e-9
            kinds.add(p.schedule)
            study.tell(trial, 0.0)
    if space.searches("schedule"):
        assert kinds == {"uniform", "owl", "cwl", "profile"}


def test_profile_clipping_keeps_the_mean():
    from search_spaces.space import MAX_BLOCK_SPARSITY, dirichlet, dirichlet_point, profile_schedule

    for offsets, target in (([0.9, -0.9, 0.9], 0.8), ([-1.0, 0.0, 1.0], 0.1), ([0.0], 0.5), ([0.3, -0.2], 0.95)):
        for n in (1, 2, 5, 32):
            v = profile_schedule(offsets, target, n)
            assert all(0 <= s <= MAX_BLOCK_SPARSITY for s in v) and abs(sum(v) / n - target) < 1e-9
    w = {"en": 0.2, "sw": 0.8, "zh": 0.0}
    assert dirichlet(dirichlet_point(w)) == pytest.approx(w)


def test_a_space_file_by_path(tmp_path):
    from search_spaces.space import load_space
    from tasks.errors import UserError

    (tmp_path / "mine.yaml").write_text("params:\n  cwl_lambda: {type: float, low: -0.1, high: 0.1}\n")
    assert load_space("./mine.yaml", tmp_path).names() == ["cwl_lambda"]
    (tmp_path / "bad.yaml").write_text("params:\n  x: {type: float, low: 1, high: 0}\n")
    with pytest.raises(UserError):
        load_space("bad.yaml", tmp_path)


# ---------------------------------------------------------------- bad files (no Ray)

BAD = {
    "unknown space": ({"space": "mwanda_nope"}, "space: unknown space 'mwanda_nope'"),
    "metric not produced": ({"objectives": [{"metric": "ppl.zh"}]}, "objectives[0].metric: 'ppl.zh' is not produced"),
    "parallel 0": ({"parallel": 0}, "parallel:"),
    "parallel negative": ({"parallel": -2}, "parallel:"),
    "unknown language": ({"calibration": {"languages": ["en", "xx"], "data": "./text", "nsamples": 6, "seqlen": 32}},
                         "calibration.languages[1]"),
    "unknown key": ({"colour": "red"}, "colour: unknown key"),
    "space param not a hyperparameter of the method": ({"method": "wanda"}, "space: mwanda_mix searches 'lambda_var'"),
    "split in a search": ({"evaluation": {"ppl": {"languages": ["en"], "split": "test"}}, "objectives": [{"metric": "ppl.en"}]},
                          "evaluation.ppl.split: a search's objectives read valid"),
    # issue 16 / 28: every bad `baselines:` value is one line naming it
    "baseline unknown word": ({"baselines": ["uniform", "english"]}, "baselines[1]: unknown baseline 'english'"),
    "baseline target without a language": ({"baselines": ["target"], "objectives": [{"metric": "ppl.mean"}]},
                                           "baselines[0]: target: the first objective names no language"),
    "baseline language the source lacks": ({"baselines": [{"name": "zh-only", "calib": "zh"}]}, "baselines[0].calib:"),
    "baseline bad mix": ({"baselines": [{"name": "m", "calib": "en=-1,sw=2"}]}, "baselines[0].calib:"),
    "baseline duplicate labels": ({"baselines": ["uniform", {"name": "uniform", "calib": "en"}]},
                                  "baselines: two baselines are labelled 'wanda·uniform'"),
    "baseline unknown method": ({"baselines": [{"name": "m", "calib": "en", "method": "wandaa"}]}, "baselines[0].method:"),
    "baseline hp of another method": ({"baselines": [{"name": "m", "calib": "en", "hp": {"lambda_var": 1}}]},
                                      "baselines[0].hp:"),
    "baseline unknown key": ({"baselines": [{"name": "m", "calib": "en", "colour": 1}]}, "baselines[0].colour: unknown key"),
    "baseline missing shares file": ({"baselines": [{"name": "mbs", "calib": {"from": "./shares.yaml"}}]},
                                     "baselines[0].calib.from: cannot read training-language shares"),
    "baseline bad hp": ({"baselines": [{"name": "m", "calib": "en", "hp": {"lambda_nope": 1}}]}, "baselines[0].hp:"),
    "baselines not a list": ({"baselines": "uniform"}, "baselines:"),
    "test_every_trial not a boolean": ({"test_every_trial": "sometimes"}, "test_every_trial:"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_search_file_is_one_line_exit_2_no_study(case, run_dir, capsys):
    over, expected = BAD[case]
    path = write_search(run_dir, **over)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert not (run_dir / "optuna.db").exists() and not (run_dir / "mlflow.db").exists()


def test_example_search_file_validates():
    from orchestrator.search.file import load_search

    cfg, space = load_search(ROOT / "searches" / "sw_mix.yaml")
    assert cfg.name == "sw-mix-search" and space.name == "mwanda_mix" and len(cfg.objectives) == 2


def test_relative_paths_are_relative_to_the_search_file_not_the_cwd(run_dir, tmp_path_factory, monkeypatch):
    """Sweep and search files share one resolver; searches used to keep lm-eval task folders
    as given, so a run started from another folder looked for them there."""
    from orchestrator.search.file import evaluation, load_search

    (run_dir / "mytasks").mkdir()  # an own lm-eval task folder, next to the file only
    ev = {"ppl": {"languages": ["en"], "data": "./text"},
          "lm_eval": {"tasks": ["polyprune_cont_en"], "limit": 2, "include_paths": ["./mytasks"]}}
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg, _ = load_search(write_search(run_dir, evaluation=ev, objectives=[{"metric": "ppl.en"}]))
    here = os.path.abspath(run_dir)
    assert evaluation(cfg)["lm_eval"]["include_paths"] == [os.path.join(here, "mytasks")]
    assert evaluation(cfg)["ppl"]["data"] == os.path.join(here, "text")
    assert cfg.tracking_uri == f"sqlite:///{os.path.join(here, 'mlflow.db')}"
    assert cfg.storage == f"sqlite:///{os.path.join(here, 'optuna.db')}"


# ---------------------------------------------------------------- on Ray


def baseline_runs(folder: Path, name: str = "s") -> dict:
    """label -> the baseline's runs (tagged polyprune.kind=baseline; never Optuna trials)."""
    out: dict = {}
    for r in child_runs(folder / "mlflow.db", name, "polyprune.baseline"):
        if r.data.tags.get("polyprune.kind") == "baseline":
            out.setdefault(r.data.tags["polyprune.baseline"], []).append(r)
    return out


def test_search_then_resume_adds_trials(ray_local, run_dir, capsys):
    path = write_search(run_dir)
    assert main(["search", str(path)]) == 0
    assert main(["search", str(path), "--n-trials", "2"]) == 0
    ts = trials(run_dir)
    assert [t.state.name for t in ts] == ["COMPLETE"] * 6  # baselines are not trials: the sampler never saw them
    assert not any("polyprune.baseline" in t.user_attrs for t in ts)
    # the default baselines, run once across both runs: the literature's plain Wanda on the uniform mix and on
    # the target language alone, and the search's own method at its defaults on the uniform mix
    bases = baseline_runs(run_dir)
    assert sorted(bases) == ["mwanda·uniform", "wanda·sw-only", "wanda·uniform"] and all(len(v) == 1 for v in bases.values())
    b = {k: v[0] for k, v in bases.items()}
    assert {r.info.status for r in b.values()} == {"FINISHED"}
    assert b["wanda·uniform"].data.params["method"] == "wanda" and b["wanda·sw-only"].data.params["method"] == "wanda"
    assert "lambda_var" not in b["wanda·uniform"].data.params  # plain Wanda: pooled statistics, no coefficients
    assert b["mwanda·uniform"].data.params["method"] == "mwanda"
    from tasks.pruning import METHODS

    defaults = METHODS.get("mwanda").Params()
    assert float(b["mwanda·uniform"].data.params["lambda_var"]) == defaults.lambda_var
    assert mix_of(b["wanda·uniform"].data.params["calib"]) == pytest.approx({"de": 1 / 3, "en": 1 / 3, "sw": 1 / 3}, abs=1e-6)
    assert b["wanda·sw-only"].data.params["calib"] == "sw=1"
    assert all(r.data.params["seed"] == "0" and r.data.params["eval.ppl_split"] == "valid" for r in b.values())
    mixes = [t.user_attrs["calib"] for t in ts]
    assert len(set(mixes)) == 6
    for m in mixes:
        assert abs(sum(mix_of(m).values()) - 1) < 1e-5
    runs = trial_runs(run_dir)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["polyprune.trial"]) for r in runs) == list(range(6))
    assert all(r.data.tags["polyprune.study"] == "s" and r.data.params["calib"] in mixes for r in runs)
    assert all("ppl.sw" in r.data.metrics and "lambda_prob" in r.data.params for r in runs)
    # the parent: best trials, baselines and Optuna's figures
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = cl.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["polyprune.role"] == "search" and parent.info.status == "FINISHED"
    figs = {a.path for a in cl.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/pareto_front.png", "figures/optimization_history_ppl.sw.png"} <= figs
    # the sampler saw valid numbers only: each trial's values are its run's valid metrics, and a trial
    # measures nothing else (test_every_trial: false, the default), in both runs (resume keeps both)
    by_number = {t.number: t for t in ts}
    for r in runs:
        t = by_number[int(r.data.tags["polyprune.trial"])]
        m = r.data.metrics
        assert r.data.params["eval.ppl_split"] == "valid"
        assert t.values == [m["ppl.sw"], m["ppl.mean"]]
        assert not any(k.startswith("test.") for k in m)
    # test is measured for the best trials (the Pareto front) by their held-out runs, never told: one per
    # trial that was best at the end of a run (the first run's may have left the front since)
    held = held_out_runs(run_dir)
    front = {t.number for t in optuna_study(run_dir).best_trials}
    assert front <= {int(r.data.tags["polyprune.held_out"]) for r in held} and {r.info.status for r in held} == {"FINISHED"}
    assert len({r.data.tags["polyprune.cell_id"] for r in held}) == len(held) and len(held) <= 2 * len(front)
    for r in held:
        t, m = by_number[int(r.data.tags["polyprune.held_out"])], r.data.metrics
        assert r.data.tags["polyprune.kind"] == "held-out" and "polyprune.trial" not in r.data.tags
        assert {"test.ppl.en", "test.ppl.de", "test.ppl.sw", "test.ppl.mean"} <= set(m) and "ppl.sw" not in m
        assert r.data.params["calib"] == t.user_attrs["calib"] and r.data.params["eval.ppl_split"] == "test"
        assert not any(str(v) in str(t.user_attrs) for k, v in m.items() if k.startswith("test."))
    pm = parent.data.metrics  # a label in a metric name: its `·` as `.`
    assert pm["baseline.wanda.sw-only.ppl.sw"] == b["wanda·sw-only"].data.metrics["ppl.sw"]
    assert pm["baseline.wanda.sw-only.test.ppl.sw"] == b["wanda·sw-only"].data.metrics["test.ppl.sw"]
    out = capsys.readouterr().out
    assert "baseline wanda·uniform" in out and "baseline mwanda·uniform" in out and "best (Pareto)" in out and "(test " in out


def test_named_baselines_run_first_once(ray_local, run_dir, capsys):
    """Issue 16 / 28: uniform, target and an MBS-like mix (needs zh: its own text folder) as plain Wanda, one
    naming its method, and the search's method alone; a rerun runs none twice."""
    from conftest import write_text_folder
    from mlflow import MlflowClient

    write_text_folder(run_dir / "text4", langs=("en", "de", "sw", "zh"))
    mbs = "en=0.7,sw=0.2,zh=0.1"
    path = write_search(run_dir, calibration={"languages": ["en", "sw", "zh"], "data": "./text4", "nsamples": 6, "seqlen": 32},
                        evaluation={"ppl": {"languages": ["en", "sw"], "nsamples": 4}}, n_trials=2,
                        baselines=["uniform", "target", {"name": "mbs", "calib": mbs},
                                   {"name": "en-only", "calib": "en", "method": "magnitude"}])
    assert main(["search", str(path)]) == 0
    named = {k: v[0] for k, v in baseline_runs(run_dir).items()}
    assert set(named) == {"wanda·uniform", "wanda·sw-only", "wanda·mbs", "magnitude·en-only", "mwanda·uniform"}
    assert {r.info.status for r in named.values()} == {"FINISHED"}
    assert {k: r.data.params["method"] for k, r in named.items()} == {
        "wanda·uniform": "wanda", "wanda·sw-only": "wanda", "wanda·mbs": "wanda", "magnitude·en-only": "magnitude",
        "mwanda·uniform": "mwanda"}
    assert named["wanda·mbs"].data.params["calib"] == mbs and named["wanda·sw-only"].data.params["calib"] == "sw=1"
    assert all(r.data.params["schedule"] == "uniform" for r in named.values())
    runs = trial_runs(run_dir)
    assert len(runs) == 2 and len(trials(run_dir)) == 2
    parent = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}").get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["baseline.wanda.mbs.ppl.sw"] == named["wanda·mbs"].data.metrics["ppl.sw"]
    assert parent.data.metrics["baseline.wanda.mbs.test.ppl.sw"] == named["wanda·mbs"].data.metrics["test.ppl.sw"]
    # resumed with more trials: no baseline runs twice
    assert main(["search", str(path), "--n-trials", "1"]) == 0
    assert all(len(v) == 1 for v in baseline_runs(run_dir).values()) and len(trial_runs(run_dir)) == 3
    # the report: every trial's valid vs test, and the best trial (chosen on valid) vs each baseline on test
    import csv

    out = run_dir / "report"
    assert main(["report", "s", "--out", str(out), "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"]) == 0
    assert (out / "search_valid_vs_test_ppl.sw.png").is_file()
    rows = {r["language"]: r for r in csv.DictReader((out / "search_best_vs_baselines_test.csv").open())}
    assert list(rows) == ["en", "sw", "mean"]
    runs = {int(r.data.tags["polyprune.trial"]): r for r in trial_runs(run_dir)}
    best = next(int(k.split("#")[1]) for k in rows["sw"] if k.startswith("best #"))
    assert best == min(runs, key=lambda n: runs[n].data.metrics["ppl.sw"])  # chosen on valid
    tested = {int(r.data.tags["polyprune.held_out"]): r for r in held_out_runs(run_dir)}  # its test: its held-out run's
    for label, r in named.items():
        got, want = float(rows["sw"][label]), r.data.metrics["test.ppl.sw"]
        assert got == pytest.approx(want, rel=1e-12)
        assert float(rows["sw"][f"best - {label}"]) == pytest.approx(tested[best].data.metrics["test.ppl.sw"] - want, rel=1e-9)
    html = (out / "report.html").read_text()
    assert "<th>best - wanda·mbs</th>" in html and not list(out.glob("ppl_*"))  # baselines are not a calibration grid
    capsys.readouterr()
    assert main(["status", "s", "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"]) == 0
    shown = capsys.readouterr().out
    assert f"best trial {best}" in shown and "[wanda·mbs]" in shown and "test" in shown


def test_failing_trials_are_told_fail_once(ray_local, run_dir, tmp_path):
    # cwl with a huge lambda pushes block sparsities outside [0, 1): the engine refuses.
    (run_dir / "space.yaml").write_text("params:\n  schedule: [cwl]\n  cwl_lambda: {type: float, low: 5, high: 6}\n")
    path = write_search(run_dir, space="./space.yaml", baselines=False, n_trials=2, objectives=[{"metric": "ppl.mean"}])
    assert main(["search", str(path)]) == 0
    ts = trials(run_dir)
    assert [t.state.name for t in ts] == ["FAIL", "FAIL"]
    assert all("schedule" in t.user_attrs["polyprune.error"] for t in ts)
    assert {r.info.status for r in trial_runs(run_dir)} == {"FAILED"}


def states(db: Path) -> dict[str, int]:
    return dict(sqlite_rows(db, "select state, count(*) from trials group by state"))


def test_kill_9_driver_then_resume_loses_no_trial(ray_local, run_dir):
    path = write_search(run_dir, n_trials=5, objectives=[{"metric": "ppl.sw"}])
    env = {**os.environ, "POLYPRUNE_CELL_DELAY_S": "1.5"}  # trials in flight when the driver dies
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "search", str(path), "--ray-address", ray_local],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = run_dir / "optuna.db"

    def mid_search():
        s = states(db)
        return s.get("COMPLETE", 0) >= 1 and s.get("RUNNING", 0) >= 1

    kill_9_when(proc, mid_search)
    before = trials(run_dir)
    running = [t.number for t in before if t.state.name == "RUNNING"]
    assert running

    assert main(["search", str(path)]) == 0
    after = trials(run_dir)
    numbers = [t.number for t in after]
    assert len(numbers) == len(set(numbers))
    assert not any(t.state.name in ("RUNNING", "WAITING") for t in after)
    lost = [t for t in after if "polyprune.lost" in t.user_attrs]
    assert sorted(t.number for t in lost) == running and all(t.state.name == "FAIL" for t in lost)
    # every lost trial was re-run from its own parameters and completed
    retries = {t.user_attrs.get("polyprune.retry_of"): t for t in after if "polyprune.retry_of" in t.user_attrs}
    for t in lost:
        again = retries[t.number]
        assert again.state.name == "COMPLETE"
        # in flight (its cell made and sent): exactly its parameters; killed while still being asked
        # (Optuna stores the parameters one by one): the ones it had, the rest sampled on the re-run
        assert again.params == t.params if "cell_id" in t.user_attrs else t.params.items() <= again.params.items()
    assert sum(t.state.name == "COMPLETE" for t in after) == 5
    assert not any(r.info.status == "RUNNING" for r in trial_runs(run_dir))
