"""A screened search (`fidelity:`, issue 29): every trial screened from the dense model's cached
statistics on a few valid windows, the best fraction so far promoted to the exact prune; Optuna hears
the screen at step 0 and the full values of promoted trials only; a driver killed with -9 at either
rung resumes. Real local Ray, sqlite Optuna and MLflow, the tiny model (test_search.py's fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT, child_runs, kill_9_when, sqlite_rows
from test_search import trials, write_search
from orchestrator.cli import main
from orchestrator.names import RUNG, SCREEN_RUN, SCREENED

SCREENED_SEARCH = {"objectives": [{"metric": "ppl.mean"}], "n_trials": 6, "parallel": 2, "baselines": False,
                   "fidelity": {"windows": 2, "promote": 0.5}}


def runs_of(run_dir, kind: str) -> list:
    return [r for r in child_runs(run_dir / "mlflow.db", "s", "polyprune.kind") if r.data.tags["polyprune.kind"] == kind]


def test_screened_search_promotes_the_best_and_tells_optuna_each_rung(ray_local, run_dir, capsys):
    from mlflow import MlflowClient
    from optuna.trial import FrozenTrial

    from orchestrator.search.cells import trial_cell
    from orchestrator.search.file import load_search

    path = write_search(run_dir, **SCREENED_SEARCH)
    assert main(["search", str(path)]) == 0
    ts = trials(run_dir)
    states = [t.state.name for t in ts]
    assert len(ts) == 6 and set(states) == {"COMPLETE", "PRUNED"}, states
    cl = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    screens, fulls = runs_of(run_dir, "screen"), runs_of(run_dir, "trial")
    assert len(screens) == 6 and len(fulls) == states.count("COMPLETE")
    for r in screens:  # a draft: no trial tag, no model; screened from the cache on 2 windows of valid
        assert "polyprune.trial" not in r.data.tags and "polyprune.model_id" not in r.data.tags
        assert r.data.params["fidelity.statistics"] == "dense-cache" and r.data.params["fidelity.windows"] == "2"
        assert r.data.metrics["screen.cache_bytes"] > 0 and not any(k.startswith("test.") for k in r.data.metrics)
    assert sum(r.data.metrics["screen.cache_build_s"] > 0 for r in screens) >= 1  # built once per worker at most...
    assert sum(r.data.metrics["screen.cache_build_s"] > 0 for r in screens) <= 2  # ...then held (or loaded from disk)
    by_screen = {int(r.data.tags[SCREENED]): r for r in screens}
    cfg, space = load_search(path)
    for t in ts:  # Optuna: the screen at step 0 (every trial), the full values (promoted ones only)
        s = by_screen[t.number]
        assert t.intermediate_values == {0: s.data.metrics["ppl.mean"]} and t.user_attrs[SCREEN_RUN] == s.info.run_id
        if t.state.name == "PRUNED":
            assert t.user_attrs[RUNG] == "screen" and "mlflow_run_id" not in t.user_attrs
            continue
        full = cl.get_run(t.user_attrs["mlflow_run_id"])
        assert t.user_attrs[RUNG] == "full" and full.data.tags[RUNG] == "full" and full.data.tags["polyprune.trial"] == str(t.number)
        assert t.values == [full.data.metrics["ppl.mean"]] and full.data.params["fidelity.statistics"] == "exact"
        # exact: the very cell an unscreened search runs for these parameters (the sequential prune, every window)
        assert full.data.tags["polyprune.cell_id"] == trial_cell(cfg, space, t).cell_id == t.user_attrs["cell_id"]
        assert "polyprune.model_id" in full.data.tags and isinstance(t, FrozenTrial)
    best_screen = min(ts, key=lambda t: t.intermediate_values[0])
    assert best_screen.state.name == "COMPLETE"  # the best screen is the best so far when it arrives: promoted
    got = capsys.readouterr()
    out, log = got.out, got.out + got.err
    assert "PROMOTED trial" in log and "SCREENED trial" in log and "not promoted" in log, log[-3000:]
    assert "rungs: 6 trials screened on 2 valid windows per language" in out and f"{len(fulls)} promoted" in out
    best = [t for t in ts if t.state.name == "COMPLETE"]
    parent = cl.get_run(fulls[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["best.trial"] == min(best, key=lambda t: t.values[0]).number  # only full fidelity is best
    assert parent.data.metrics["rungs.screen.runs"] == 6 and parent.data.metrics["rungs.full.runs"] == len(fulls)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert main(["status", "s", "--tracking-uri", uri]) == 0
    assert "trial 0 (screen)" in capsys.readouterr().out
    report = run_dir / "report"
    assert main(["report", "s", "--out", str(report), "--tracking-uri", uri]) == 0
    rows = (report / "search_rungs.csv").read_text().splitlines()
    assert rows[0] == "rung,runs,cell seconds" and rows[1].startswith("screen,6,") and rows[2].startswith(f"full,{len(fulls)},")
    trials_csv = (report / "search_trials.csv").read_text().splitlines()
    assert len(trials_csv) == 1 + len(fulls)  # the report's trials are the full-fidelity ones; screens are drafts
    # the best trial's model is a full-fidelity one: register picks among READY models, screens have none
    assert main(["register", "s", "--metric", "ppl.mean", "--split", "valid", "--as", "scr-best", "--tracking-uri", uri]) == 0
    said = capsys.readouterr().out
    assert "best of search 's'" in said and any(f.info.run_id in said for f in fulls), said


def rung_running(run_dir, rung: str) -> bool:
    rows = sqlite_rows(run_dir / "mlflow.db", "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                                              f"where t.key = '{RUNG}' and t.value = '{rung}' and r.status = 'RUNNING'")
    return bool(rows and rows[0][0])


@pytest.mark.parametrize("rung", ["screen", "full"])
def test_kill_9_at_either_rung_then_resume(ray_local, run_dir, rung):
    path = write_search(run_dir, **{**SCREENED_SEARCH, "n_trials": 4, "parallel": 1})
    env = {**os.environ, "POLYPRUNE_CELL_DELAY_S": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "search", str(path), "--ray-address", ray_local],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_9_when(proc, lambda: (run_dir / "mlflow.db").exists() and rung_running(run_dir, rung))
    assert main(["search", str(path)]) == 0
    ts = trials(run_dir)
    lost = [t for t in ts if "polyprune.lost" in t.user_attrs]
    assert len(lost) == 1 and lost[0].state.name == "FAIL"  # the trial in flight: lost, re-run from its parameters
    again = [t for t in ts if t.user_attrs.get("polyprune.retry_of") == lost[0].number]
    assert len(again) == 1 and again[0].params == lost[0].params and again[0].state.name in ("COMPLETE", "PRUNED")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts) == 4 and not any(t.state.name == "RUNNING" for t in ts)
    assert not any(r.info.status == "RUNNING" for r in runs_of(run_dir, "screen") + runs_of(run_dir, "trial"))
    for t in ts:  # every told trial: its screen ran to the end, and a COMPLETE one its full cell
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert 0 in t.intermediate_values
        if t.state.name == "COMPLETE":
            assert t.user_attrs[RUNG] == "full" and t.values


def test_a_screened_search_confirms_its_promoted_trials_only(ray_local, run_dir, capsys):
    """The confirmation's candidates are COMPLETE trials: the promoted ones, rebuilt as their exact cells."""
    path = write_search(run_dir, **{**SCREENED_SEARCH, "n_trials": 4, "baselines": ["uniform"],
                                    "confirm": {"top": 2, "selection_seeds": 1, "test_seeds": 2}})
    assert main(["search", str(path)]) == 0
    ts = {t.number: t for t in trials(run_dir)}
    full = {t.user_attrs["cell_id"] for t in ts.values() if t.state.name == "COMPLETE"}
    confirms = [r for r in child_runs(run_dir / "mlflow.db", "s", "polyprune.confirm") if r.data.tags["polyprune.confirm"].startswith("trial")]
    picked = {int(r.data.tags["polyprune.confirm"].split()[1]) for r in confirms}
    assert picked and all(ts[n].state.name == "COMPLETE" and ts[n].user_attrs[RUNG] == "full" for n in picked)
    from orchestrator.search.cells import reseeded, trial_cell
    from orchestrator.search.file import load_search

    cfg, space = load_search(path)
    for r in confirms:  # each re-run is the trial's exact cell on another seed, never its screen
        if r.data.tags["polyprune.confirm_phase"] == "selection":
            t = ts[int(r.data.tags["polyprune.confirm"].split()[1])]
            assert r.data.tags["polyprune.cell_id"] == reseeded(trial_cell(cfg, space, t), int(r.data.tags["polyprune.confirm_seed"])).cell_id
    assert len(full) >= 1
    out = capsys.readouterr().out
    assert "confirmation" in out and "wanda·uniform" in out


def test_sparsegpt_has_no_cached_statistics_so_its_screened_search_runs_at_full_fidelity(ray_local, run_dir, capsys):
    (run_dir / "mix.yaml").write_text("mix: true\nparams: {}\n")
    path = write_search(run_dir, **{**SCREENED_SEARCH, "method": "sparsegpt", "space": "./mix.yaml", "n_trials": 2, "parallel": 1})
    assert main(["search", str(path)]) == 0
    assert [t.state.name for t in trials(run_dir)] == ["COMPLETE", "COMPLETE"] and runs_of(run_dir, "screen") == []
    got = capsys.readouterr()
    assert "sparsegpt is not served from cached statistics: every trial at full fidelity" in got.err + got.out
    assert "rungs:" not in got.out
