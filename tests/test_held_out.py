"""Issue 29: a trial measures valid only; the test split is measured for the trials a search reports (the
held-out stage), or on every trial with `test_every_trial: true`, as before. Real local Ray, real sqlite
Optuna and MLflow stores, the tiny model (test_search.py's fixtures)."""

from __future__ import annotations

from helpers import link_inputs
from test_search import held_out_runs, trial_runs, write_search

from orchestrator.search.driver import run_search

ONE = {"objectives": [{"metric": "ppl.sw"}], "n_trials": 3, "parallel": 1, "baselines": False}


def test_the_best_trial_is_tested_once_as_a_per_trial_test_search_tests_it(ray_local, run_dir, tiny_llama, text_dir, capsys):
    (run_dir / "every").mkdir()
    every = link_inputs(run_dir / "every", tiny_llama, text_dir)
    held = run_search(str(write_search(run_dir, **ONE)))
    per_trial = run_search(str(write_search(every, **ONE, test_every_trial=True)))
    # the same sampler seed, the same trials and valid values: the same best trial
    assert [b["number"] for b in held["best"]] == [b["number"] for b in per_trial["best"]] and len(held["best"]) == 1
    best, want = held["best"][0], per_trial["best"][0]
    assert best["values"] == want["values"]
    # no trial run measured test; the best one's test numbers are its held-out run's, and equal (same prune, same
    # seed, same windows) those the per-trial-test search measured in the trial's own run
    assert not any(k.startswith("test.") for r in trial_runs(run_dir) for k in r.data.metrics)
    (run,) = held_out_runs(run_dir)
    assert run.data.tags["polyprune.held_out"] == str(best["number"]) and best["held_out_run_id"] == run.info.run_id
    assert best["test"] == {k: v for k, v in run.data.metrics.items() if k.startswith("test.")} == want["test"]
    assert {"test.ppl.sw", "test.ppl.mean"} <= set(best["test"])
    # with test_every_trial: every trial run has its test numbers, and there is nothing to hold out
    assert all("test.ppl.sw" in r.data.metrics for r in trial_runs(every)) and held_out_runs(every) == []
    # the parent quotes the best trial's test numbers (as before)
    from mlflow import MlflowClient

    parent = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}").get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["best.test.ppl.sw"] == best["test"]["test.ppl.sw"]
    # a rerun finds the held-out run by its cell id: nothing runs, the summary says the same
    capsys.readouterr()
    again = run_search(str(write_search(run_dir, **ONE)))
    assert again["best"][0]["test"] == best["test"] and len(held_out_runs(run_dir)) == 1 and len(trial_runs(run_dir)) == 3
    assert "held out:" not in capsys.readouterr().err
