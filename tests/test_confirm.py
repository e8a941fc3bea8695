"""Issues 21 / 28: a search's confirmation. The rules on hand-made numbers (disjoint seeds, the winner
chosen on valid, Holm and the interval deciding together); then a tiny real search (real local Ray,
sqlite MLflow and Optuna stores, the tiny model) whose selection and test runs are tagged, never reach
the sampler, use disjoint seeds, and resume exactly after a stop between the two phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import child_runs
from orchestrator.cli import main
from orchestrator.search.confirm import DEFAULTS, choose, compare, lines, verdict, winner
from test_search import baseline_runs, held_out_runs, trial_runs, trials, write_search

TEST = [5, 6, 7]


def entry(label, valid, test, role="baseline"):
    return {"label": label, "role": role, "valid": dict(zip(TEST, valid)), "test": dict(zip(TEST, test))}


def losses(scale: float, n: int = 40, seeds=TEST, gap: float = 0.0) -> list[dict]:
    """Per-window losses of one model at each seed: windows of 100 tokens whose mean NLL is log(scale * 10)
    plus a fixed per-window wiggle (the same text for every model and seed) and `gap` x another one (a
    model that does better on some windows than on others)."""
    import math

    wiggle = [0.3 * math.sin(i) + gap * math.cos(3 * i) for i in range(n)]
    return [{"en": ([100 * (math.log(10 * scale) + w + 0.001 * s) for w in wiggle], [100] * n)} for s in seeds]


# ---------------------------------------------------------------- the rules (no Ray)


def test_compare_gives_the_paired_difference_and_p():
    base = [20.0, 21.0, 19.5]
    gain = compare([x * 0.97 for x in [20.1, 20.9, 19.6]], base)
    assert gain["p"] < 0.05 and -4 < gain["diff"] < -2 and gain["unit"] == "%" and len(gain["per_seed"]) == 3
    tie = compare([20.3, 20.6, 19.8], base)  # +1.5%, -1.9%, +1.5%: no consistent sign
    assert tie["p"] > 0.05
    assert compare([0.61, 0.63, 0.62], [0.51, 0.52, 0.52], log=False)["unit"] == ""
    assert compare([2.0, 4.0, 8.0], [2.0, 4.0, 8.0])["p"] == 1.0  # identical: no difference at all


def test_better_only_when_holm_and_the_interval_agree():
    win = entry("trial 4", [10.0] * 3, [9.7, 9.71, 9.69], role="winner")
    clear = entry("wanda·uniform", [10.3] * 3, [10.0, 10.01, 9.99])
    c = verdict([win, clear], "ppl.en", "minimize", TEST, 0.05, {"trial 4": losses(0.97, gap=0.01), "wanda·uniform": losses(1.0)})
    [v] = c["vs"]
    assert v["verdict"] == "better" and v["p_holm"] == pytest.approx(v["p"]) and v["high"] < 0 and c["beats_every_baseline"]
    assert v["low"] < v["diff"] < v["high"]
    # the same gain, but the text's interval crosses 0 (its windows disagree): no verdict, however small p is
    swing = [{"en": ([a + (40 if i % 2 else -40) for i, a in enumerate(nll)], tok)} for nll, tok in (x["en"] for x in losses(1.0))]
    noisy = {"trial 4": losses(0.97), "wanda·uniform": swing}
    v = verdict([win, clear], "ppl.en", "minimize", TEST, 0.05, noisy)["vs"][0]
    assert v["p"] < 0.05 and v["low"] < 0 < v["high"] and v["verdict"] == "no significant difference"
    # several baselines: Holm raises each p; one comparison that only passes unadjusted says nothing
    import math

    weak = entry("wanda·mbs", [10.3] * 3, [t * math.exp(d) for t, d in zip(win["test"].values(), (0.010, 0.013, 0.007))])
    tie = entry("wanda·sw-only", [10.3] * 3, [9.6, 9.8, 9.7])
    c = verdict([win, clear, weak, tie, entry("wanda·en-only", [11] * 3, [11.0, 11.1, 10.9])], "ppl.en", "minimize", TEST, 0.05)
    by = {v["baseline"]: v for v in c["vs"]}
    assert by["wanda·mbs"]["p"] < 0.05 <= by["wanda·mbs"]["p_holm"] == pytest.approx(2 * by["wanda·mbs"]["p"])
    assert by["wanda·mbs"]["verdict"] == by["wanda·sw-only"]["verdict"] == "no significant difference"
    assert by["wanda·uniform"]["verdict"] == "better" and not c["beats_every_baseline"]
    assert "low" not in by["wanda·uniform"]  # no per-window losses given: no interval, Holm alone decides
    # a baseline missing a test seed is left out, and "every baseline" is then not said
    short = {**entry("wanda·sw-only", [10] * 3, [11] * 3), "test": {5: 11.0, 6: 11.0}}
    c = verdict([win, clear, short], "ppl.en", "minimize", TEST, 0.05)
    assert c["incomplete"] == ["wanda·sw-only"] and not c["beats_every_baseline"] and len(c["vs"]) == 1


def test_the_winner_is_chosen_on_valid_never_on_test():
    a = {"label": "trial 4", "number": 4, "valid": {1: 10.0, 2: 10.1}, "test": {1: 12.0, 2: 12.1}}
    b = {"label": "trial 9", "number": 9, "valid": {1: 10.5, 2: 10.6}, "test": {1: 9.0, 2: 9.0}}  # best on test
    assert winner([a, b], [1, 2], sign=1)["label"] == "trial 4"
    short = {"label": "trial 2", "number": 2, "valid": {1: 9.0}}  # missing a selection seed: cannot win
    assert winner([short, a, b], [1, 2], sign=1)["label"] == "trial 4" and short["valid_mean_sd"] == (9.0, 0.0)
    assert winner([short], [1, 2], sign=1) is None


def test_choose_takes_the_best_searched_trials_on_valid_one_per_cell():
    ts = [{"number": 1, "values": [7.0], "cell_id": "b"}, {"number": 2, "values": [6.0], "cell_id": "c"},
          {"number": 3, "values": [6.0], "cell_id": "c"},  # the same cell again
          {"number": 4, "values": [8.0], "cell_id": "d"}]
    assert [t["number"] for t in choose(ts, 2, 1)] == [2, 1]
    assert [t["number"] for t in choose(ts, 2, -1)] == [4, 1]


def test_the_printed_verdict_names_seeds_interval_holm_and_cost():
    win = entry("trial 4", [10.0] * 3, [9.7, 9.71, 9.69], role="winner")
    c = {"metric": "ppl.en", "direction": "minimize", "level": 0.05, "selection_seeds": [1, 2], "test_seeds": TEST,
         "candidates": [{"label": "trial 4", "valid": {1: 10.0, 2: 10.0}, "valid_mean_sd": (10.0, 0.0)}], "winner": "trial 4",
         "tested": [win, entry("wanda·uniform", [10.3] * 3, [10.0, 10.01, 9.99])], "test": "paired t-test over 3 test seeds",
         "cost": {"selection": {"runs": 2, "cell_s": 3.0}, "test": {"runs": 6, "cell_s": 9.5}}}
    c.update(verdict(c["tested"], "ppl.en", "minimize", TEST, 0.05, {"trial 4": losses(0.97), "wanda·uniform": losses(1.0)}))
    text = "\n".join(lines(c))
    assert "selection seeds 1, 2" in text and "test seeds 5, 6, 7, which chose nothing" in text
    assert "95% interval" in text and "width" in text and "Holm p = " in text and "BETTER" in text
    assert "trial 4 beats every baseline" in text and "cost: selection 2 runs, 3 s of cell time; test 6 runs, 10 s" in text
    assert "detectable" not in text


BAD = {
    "not a mapping": ({"confirm": "yes"}, "confirm: allowed: true, false, or {top: K"),
    "unknown key": ({"confirm": {"top": 2, "colour": 1}}, "confirm.colour: unknown key"),
    "the old seeds key": ({"confirm": {"seeds": [1, 2]}}, "confirm.seeds: replaced by selection_seeds and test_seeds"),
    "top 0": ({"confirm": {"top": 0}}, "confirm.top:"),
    "one test seed": ({"confirm": {"test_seeds": [4]}}, "confirm.test_seeds: at least 2 distinct seeds"),
    "no selection seed": ({"confirm": {"selection_seeds": 0}}, "confirm.selection_seeds: at least 1 seed"),
    "the search's seed": ({"confirm": {"selection_seeds": [0, 1]}}, "confirm.selection_seeds: 0 is the search's own"),
    "overlapping seeds": ({"confirm": {"selection_seeds": [1, 2, 3], "test_seeds": [3, 4]}},
                          "confirm.test_seeds: 3 also in selection_seeds; the test seeds must be fresh"),
    "level": ({"confirm": {"level": 0.9}}, "confirm.level:"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_confirm_is_one_line_exit_2(case, run_dir, capsys):
    over, expected = BAD[case]
    assert main(["search", str(write_search(run_dir, **over))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (run_dir / "optuna.db").exists() and not (run_dir / "mlflow.db").exists()


def test_confirm_forms_give_disjoint_seeds_never_the_searchs():
    from orchestrator.search.confirm import resolve

    class Cfg:
        seed = 5

    cases = ((True, [6, 7, 8, 9], [10, 11, 12, 13, 14, 15]), ({"selection_seeds": 2, "test_seeds": 2}, [6, 7], [8, 9]),
             ({"selection_seeds": [7, 9], "test_seeds": 3}, [7, 9], [10, 11, 12]),
             ({"selection_seeds": 2, "test_seeds": [6, 20]}, [7, 8], [6, 20]))
    for raw, sel, test in cases:
        cfg = Cfg()
        cfg.confirm = raw
        resolve(cfg)
        assert (cfg.confirm.selection_seeds, cfg.confirm.test_seeds) == (sel, test)
        assert not set(sel) & set(test) and 5 not in sel + test
    assert (DEFAULTS["selection_seeds"], DEFAULTS["test_seeds"], DEFAULTS["top"]) == (4, 6, 3)
    cfg = Cfg()
    cfg.confirm = False
    resolve(cfg)
    assert cfg.confirm is None


# ---------------------------------------------------------------- a real search


def confirm_runs(folder, phase=None):
    return [r for r in child_runs(folder / "mlflow.db", "s", "polyprune.confirm")
            if phase is None or r.data.tags["polyprune.confirm_phase"] == phase]


def test_selection_then_test_seeds_resume_exactly_after_a_stop_between_them(ray_local, run_dir, capsys, monkeypatch):
    from mlflow import MlflowClient

    from orchestrator.search.test_seeds import TestSeeds

    path = write_search(run_dir, objectives=[{"metric": "ppl.sw"}], n_trials=3,
                        confirm={"top": 2, "selection_seeds": [7, 8], "test_seeds": 2})

    def stop(self):  # the driver stopped between the phases: the test stage never starts
        raise KeyboardInterrupt

    monkeypatch.setattr(TestSeeds, "run", stop)
    assert main(["search", str(path)]) == 130
    first = confirm_runs(run_dir)
    assert len(first) == 4 and {r.data.tags["polyprune.confirm_phase"] for r in first} == {"selection"}
    held = held_out_runs(run_dir)  # the held-out stage ran before the stop: the best trial's and the winner's test split
    assert 1 <= len(held) <= 2 and {r.info.status for r in held} == {"FINISHED"}
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr()
    assert "confirmation, selection" not in out.err and "confirmation, test: 8 runs to go" in out.err
    ts = trials(run_dir)
    assert len(ts) == 3 and len(trial_runs(run_dir)) == 3  # the sampler saw 3 trials, no more
    runs = confirm_runs(run_dir)
    sel, test = confirm_runs(run_dir, "selection"), confirm_runs(run_dir, "test")
    # every confirmation cell FINISHED exactly once; the selection runs are the first run's
    assert {r.info.status for r in runs} == {"FINISHED"} and len({r.data.tags["polyprune.cell_id"] for r in runs}) == len(runs)
    assert {r.info.run_id for r in sel} == {r.info.run_id for r in first}
    # the top 2 trials on 2 selection seeds; the winner and 3 baselines on 2 test seeds (9, 10: after the selection's)
    searched = sorted(ts, key=lambda t: (t.values[0], t.number))
    assert {r.data.tags["polyprune.confirm"] for r in sel} == {f"trial {searched[0].number}", f"trial {searched[1].number}"}
    assert {r.data.params["seed"] for r in sel} == {"7", "8"} and {r.data.params["seed"] for r in test} == {"9", "10"}
    assert all("polyprune.trial" not in r.data.tags and r.data.tags["polyprune.kind"] == "confirm" for r in runs)
    # selection chooses on valid and measures nothing else; the test seeds measure test whatever a trial measures
    assert not any(k.startswith("test.") for r in sel for k in r.data.metrics)
    assert all("test.ppl.sw" in r.data.metrics and "ppl.sw" in r.data.metrics for r in test)
    labels = {r.data.tags["polyprune.confirm"] for r in test}
    cl = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = cl.get_run(runs[0].data.tags["mlflow.parentRunId"])
    c = json.loads(Path(cl.download_artifacts(parent.info.run_id, "confirmation.json", str(run_dir))).read_text())
    assert labels == {c["winner"], "wanda·uniform", "wanda·sw-only", "mwanda·uniform"}
    for r in test:  # the baselines run their own method, only the seed differs from the baseline's run
        label = r.data.tags["polyprune.confirm"]
        if label != c["winner"]:
            base = baseline_runs(run_dir)[label][0]
            assert r.data.params["method"] == base.data.params["method"] and r.data.params["calib"] == base.data.params["calib"]
    # the verdict: chosen on mean valid over the selection seeds, judged on the test seeds only
    win = next(e for e in c["candidates"] if e["label"] == c["winner"])
    assert all(win["valid_mean_sd"][0] <= e["valid_mean_sd"][0] for e in c["candidates"])
    assert c["selection_seeds"] == [7, 8] and c["test_seeds"] == [9, 10] and parent.data.tags["polyprune.confirmed"] == c["winner"].split()[1]
    assert [e["role"] for e in c["tested"]] == ["winner", "baseline", "baseline", "baseline"] and len(c["vs"]) == 3
    # the winner's and the best trial's test numbers at the search's seed: their held-out runs, found again on the rerun
    assert {r.info.run_id for r in held_out_runs(run_dir)} == {r.info.run_id for r in held}
    assert {r.data.tags["polyprune.held_out"] for r in held} == {c["winner"].split()[1], str(searched[0].number)}
    tested = next(r for r in held if r.data.tags["polyprune.held_out"] == c["winner"].split()[1])
    assert c["winner_trial"]["test"] == {k: v for k, v in tested.data.metrics.items() if k.startswith("test.")} != {}
    for v in c["vs"]:  # every field a reviewer reads: the difference, its interval over seeds and text, p, Holm's p
        assert v["low"] <= v["diff"] <= v["high"] and 0 <= v["p"] <= v["p_holm"] <= 1 and set(v["n_windows"]) == {"sw"}
        assert v["verdict"] in ("better", "worse", "no significant difference")
    assert c["cost"]["selection"]["runs"] == 4 and c["cost"]["test"]["runs"] == 8 and c["cost"]["test"]["cell_s"] > 0
    pm = parent.data.metrics
    assert {"confirm.vs.wanda.uniform.p_holm", "confirm.vs.wanda.uniform.low_pct", "confirm.winner.test.ppl.sw.mean",
            "confirm.test.runs", "confirm.selection.cell_s"} <= set(pm)
    shown = out.out
    assert "selection seeds 7, 8" in shown and "test seeds 9, 10" in shown and "Holm p = " in shown and "vs wanda·uniform" in shown
    # every cell run logged its per-window losses, per split and language
    from orchestrator.models import run_file

    got = json.loads(run_file(cl, test[0].info.run_id, test[0].data.tags, "losses.json", run_dir / "l").read_text())
    assert set(got) == {"valid", "test"} and set(got["test"]) == {"en", "de", "sw"}
    assert len(got["test"]["sw"]["nll"]) == len(got["test"]["sw"]["tokens"]) == 4
    # resumed again: a deleted test run is the only run again; the study is untouched
    gone = test[0]
    cl.delete_run(gone.info.run_id)
    assert main(["search", str(path)]) == 0
    again = confirm_runs(run_dir)
    assert len(again) == 12 and len(trials(run_dir)) == 3
    assert {r.info.run_id for r in again} - {r.info.run_id for r in runs} == {
        r.info.run_id for r in again if r.data.tags["polyprune.cell_id"] == gone.data.tags["polyprune.cell_id"]}
    # status, report and register read the verdict
    capsys.readouterr()
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert main(["status", "s", "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert "confirmation winner" in shown and "wanda·uniform" in shown and "[selection trial" in shown
    report = run_dir / "report"
    assert main(["report", "s", "--out", str(report), "--tracking-uri", uri]) == 0
    assert (report / "confirmation_test_ppl.sw.png").is_file() and (report / "confirmation.csv").is_file()
    assert (report / "confirmation_selection.csv").is_file() and "Confirmation" in (report / "report.html").read_text()
    assert main(["register", "s", "--metric", "ppl.sw", "--as", "conf-best", "--tracking-uri", uri]) == 0
    assert f"confirmed winner of search 's': {c['winner']}" in capsys.readouterr().out


def test_confirm_false_runs_no_confirmation(ray_local, run_dir, capsys):
    path = write_search(run_dir, objectives=[{"metric": "ppl.sw"}], n_trials=2, baselines=False, confirm=False)
    assert main(["search", str(path)]) == 0
    assert confirm_runs(run_dir) == [] and "confirmation:" not in capsys.readouterr().out
