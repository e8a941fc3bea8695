"""A search file's `sampler:` and `pruner:` (issue 21): validated up front; a pruned trial is told
PRUNED, its MLflow run ends KILLED tagged so, and a resumed search does not re-run it. Real local
Ray, real sqlite Optuna and MLflow stores, the tiny model (test_search.py's fixtures)."""

from __future__ import annotations

import pytest

from test_search import SEARCH, trial_runs, trials, write_search
from orchestrator.cli import main
from orchestrator.names import ERROR, PRUNED
from orchestrator.search import sampling

ONE = {"objectives": [{"metric": "ppl.sw", "direction": "minimize"}], "n_trials": 3, "parallel": 1, "baselines": False}

BAD = {
    "unknown sampler": ({"sampler": {"name": "bayes"}}, "sampler.name: 'bayes' is not a sampler; allowed: tpe, gp"),
    "unknown sampler argument": ({"sampler": {"name": "gp", "n_startup": 3}}, "sampler.n_startup: not an argument of GPSampler"),
    "seed belongs to sampler_seed": ({"sampler": {"name": "tpe", "seed": 3}}, "sampler.seed: not an argument"),
    "argument of the wrong type": ({**ONE, "pruner": {"name": "wilcoxon", "p_threshold": "low"}},
                                   "pruner.p_threshold: WilcoxonPruner takes float"),
    "unknown pruner": ({**ONE, "pruner": {"name": "asha"}}, "pruner.name: 'asha' is not a pruner; allowed: none"),
    "unknown pruner argument": ({**ONE, "pruner": {"name": "median", "warmup": 1}}, "pruner.warmup: not an argument of MedianPruner"),
    "missing pruner argument": ({**ONE, "pruner": {"name": "percentile"}}, "pruner: PercentilePruner: missing a required argument"),
    "pruner with 2 objectives": ({"pruner": {"name": "wilcoxon"}}, "pruner.name: wilcoxon prunes single-objective searches"),
    "single-objective sampler with 2 objectives": ({"sampler": {"name": "cmaes"}}, "sampler.name: cmaes optimizes one objective"),
    "pruner on a non-ppl objective": ({**ONE, "objectives": [{"metric": "time.cell_s"}], "pruner": {"name": "median"}},
                                      "pruner.name: a pruner hears each language's valid perplexity"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sampler_or_pruner_is_one_line_exit_2_nothing_launched(case, run_dir, capsys):
    over, expected = BAD[case]
    assert main(["search", str(write_search(run_dir, **over))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert not (run_dir / "optuna.db").exists() and not (run_dir / "mlflow.db").exists()


@pytest.mark.parametrize("name", list(sampling.SAMPLERS))
def test_every_sampler_builds_with_the_seed(name):
    import optuna

    s = sampling.build_sampler({"name": name}, seed=3)
    assert isinstance(s, getattr(optuna.samplers, sampling.SAMPLERS[name][0]))


@pytest.mark.parametrize("name", list(sampling.PRUNERS))
def test_every_pruner_builds(name):
    import optuna

    args = {"percentile": {"percentile": 25.0}, "threshold": {"upper": 10.0}}.get(name, {})
    p = sampling.build_pruner({"name": name, **args})
    assert isinstance(p, getattr(optuna.pruners, sampling.PRUNERS[name][0]))


def test_default_sampler_is_todays_tpe():
    s = sampling.build_sampler(None, seed=0)
    assert type(s).__name__ == "TPESampler" and sampling.build_pruner(None).__class__.__name__ == "NopPruner"


def test_pruned_trials_are_recorded_and_not_rerun_on_resume(ray_local, run_dir, capsys):
    """A perplexity is never below 1: a threshold pruner with upper 1 stops every trial at its first
    languages. Each is told PRUNED (with its intermediate values), its run ends KILLED with the PRUNED
    tag and no test pass (it cost what it ran); a resumed search counts them and runs none again."""
    path = write_search(run_dir, **ONE, pruner={"name": "threshold", "upper": 1.0}, sampler={"name": "random"})
    assert main(["search", str(path)]) == 0
    ts = trials(run_dir)
    assert [t.state.name for t in ts] == ["PRUNED"] * 3
    assert all(t.intermediate_values and 0 in t.intermediate_values for t in ts)
    runs = trial_runs(run_dir)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}
    for r in runs:
        assert PRUNED in r.data.tags and "pruned by threshold" in r.data.tags[ERROR]
        assert "time.cell_s" in r.data.metrics and not any(k.startswith("test.") for k in r.data.metrics)
    out = capsys.readouterr()
    assert "PRUNED   trial 0: pruned by threshold after 1 of 3 valid languages" in out.err and "3 pruned" in out.out
    # resume: the budget is spent (pruned trials count); nothing is asked or re-run
    assert main(["search", str(path)]) == 0
    assert [t.state.name for t in trials(run_dir)] == ["PRUNED"] * 3 and len(trial_runs(run_dir)) == 3
    # one more trial: only the new one runs
    assert main(["search", str(path), "--n-trials", "1"]) == 0
    ts = trials(run_dir)
    assert len(ts) == 4 and [t.state.name for t in ts] == ["PRUNED"] * 4
    assert sorted(int(r.data.tags["polyprune.trial"]) for r in trial_runs(run_dir)) == [0, 1, 2, 3]
    assert not [r for r in trial_runs(run_dir) if r.info.status == "RUNNING"]


def test_the_study_names_its_metrics_for_the_dashboard(ray_local, run_dir):
    path = write_search(run_dir, n_trials=2, parallel=2, baselines=False, sampler={"name": "gp"})
    assert main(["search", str(path)]) == 0
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert study.metric_names == ["ppl.sw (valid)", "ppl.mean (valid)"]
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 2
    assert SEARCH["objectives"][0]["metric"] == "ppl.sw"
