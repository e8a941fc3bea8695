"""Issue 21 part 1: a search's confirmation stage. The verdict's rules on hand-made numbers;
then a tiny real search (real local Ray, sqlite MLflow and Optuna stores, the tiny model)
whose confirmation runs are tagged, never reach the sampler, and resume by cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import child_runs
from orchestrator.cli import main
from orchestrator.search.confirm import choose, compare, lines, verdict
from test_search import trial_runs, trials, write_search

SEEDS = [1, 2, 3]


def entry(label, valid, test):
    return {"label": label, "valid": dict(zip(SEEDS, valid)), "test": dict(zip(SEEDS, test))}


# ---------------------------------------------------------------- the rules (no Ray)


def test_a_clear_gain_a_tie_and_a_loss():
    base = [20.0, 21.0, 19.5]
    gain = compare([x * 0.97 for x in [20.1, 20.9, 19.6]], base, sign=1, level=0.05)
    assert gain["verdict"] == "better" and gain["p"] < 0.05 and -4 < gain["diff"] < -2
    tie = compare([20.3, 20.6, 19.8], base, sign=1, level=0.05)  # +1.5%, -1.9%, +1.5%: no consistent sign
    assert tie["verdict"] == "no significant difference" and tie["p"] > 0.05
    loss = compare([x * 1.05 for x in [19.9, 21.1, 19.5]], base, sign=1, level=0.05)
    assert loss["verdict"] == "worse" and loss["diff"] > 4
    # maximizing (an accuracy): higher is better, raw differences
    up = compare([0.61, 0.63, 0.62], [0.51, 0.52, 0.52], sign=-1, level=0.05, log=False)
    assert up["verdict"] == "better" and up["unit"] == ""
    # identical per-seed differences: no spread, the test is decided by the sign alone
    assert compare([2.0, 4.0, 8.0], [2.0, 4.0, 8.0], 1, 0.05)["verdict"] == "no significant difference"
    assert compare([1.9, 3.8, 7.6], [2.0, 4.0, 8.0], 1, 0.05)["verdict"] == "better"


def test_what_three_seeds_can_detect():
    """With n = 3 the 80%-power detectable difference is (t_.975,2 + t_.8,2) / sqrt(3) = 3.1 sd of the paired differences."""
    r = compare([10.0 * math.exp(d) for d in (0.010, 0.000, 0.005)], [10.0] * 3, 1, 0.05)
    sd = 0.005  # of the log differences above
    assert r["detectable"] == pytest.approx(100 * math.expm1((4.303 + 1.061) / math.sqrt(3) * sd), rel=1e-3)


def test_the_winner_is_chosen_on_valid_never_on_test():
    a = entry("trial 4", valid=[10.0, 10.1, 10.0], test=[12.0, 12.1, 12.2])  # best on valid
    b = entry("trial 9", valid=[10.5, 10.6, 10.4], test=[11.0, 11.0, 11.0])  # best on test: must not win
    u = entry("uniform", valid=[10.4, 10.5, 10.3], test=[11.5, 11.6, 11.4])
    c = verdict([a, b], [u], "ppl.mean", "minimize", SEEDS, 0.05)
    assert c["winner"] == "trial 4"
    assert c["vs"][0]["baseline"] == "uniform" and c["vs"][0]["verdict"] == "worse"
    text = "\n".join(lines(c))
    assert "paired t-test over 3 calibration seeds on log test ppl.mean" in text and "level 0.05" in text
    assert "winner trial 4" in text and "WORSE" in text
    # a candidate missing a seed cannot win; it is listed as incomplete
    short = entry("trial 2", valid=[9.0, 9.0], test=[9.0, 9.0])
    c = verdict([short, a], [u], "ppl.mean", "minimize", SEEDS, 0.05)
    assert c["winner"] == "trial 4" and c["incomplete"] == ["trial 2"]


def test_choose_takes_the_best_searched_trials_on_valid_one_per_cell():
    ts = [{"number": 0, "values": [5.0], "baseline": "uniform", "cell_id": "a"},
          {"number": 1, "values": [7.0], "baseline": None, "cell_id": "b"},
          {"number": 2, "values": [6.0], "baseline": None, "cell_id": "c"},
          {"number": 3, "values": [6.0], "baseline": None, "cell_id": "c"},  # the same cell again
          {"number": 4, "values": [8.0], "baseline": None, "cell_id": "d"}]
    assert [t["number"] for t in choose(ts, 2, 1)] == [2, 1]
    assert [t["number"] for t in choose(ts, 2, -1)] == [4, 1]


BAD = {
    "not a mapping": ({"confirm": "yes"}, "confirm: allowed: true, false, or {top: K"),
    "unknown key": ({"confirm": {"top": 2, "colour": 1}}, "confirm.colour: unknown key"),
    "top 0": ({"confirm": {"top": 0}}, "confirm.top:"),
    "one seed": ({"confirm": {"seeds": [4]}}, "confirm.seeds: at least 2 distinct seeds"),
    "the search's seed": ({"confirm": {"seeds": [0, 1]}}, "confirm.seeds: 0 is the search's own calibration seed"),
    "level": ({"confirm": {"level": 0.9}}, "confirm.level:"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_confirm_is_one_line_exit_2(case, run_dir, capsys):
    over, expected = BAD[case]
    assert main(["search", str(write_search(run_dir, **over))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (run_dir / "optuna.db").exists() and not (run_dir / "mlflow.db").exists()


def test_confirm_forms():
    from orchestrator.search.confirm import resolve

    class Cfg:
        seed = 5

    for raw, want in ((True, [6, 7, 8]), ({"seeds": 2}, [6, 7]), ({"seeds": [11, 12]}, [11, 12])):
        cfg = Cfg()
        cfg.confirm = raw
        resolve(cfg)
        assert cfg.confirm.seeds == want and cfg.confirm.top == 3
    cfg = Cfg()
    cfg.confirm = False
    resolve(cfg)
    assert cfg.confirm is None


# ---------------------------------------------------------------- a real search


def confirm_runs(folder):
    return [r for r in child_runs(folder / "mlflow.db", "s", "polyprune.confirm")]


def test_confirmation_runs_are_tagged_never_told_and_resume_by_cell(ray_local, run_dir, capsys):
    from mlflow import MlflowClient

    path = write_search(run_dir, objectives=[{"metric": "ppl.sw"}], n_trials=4, confirm={"top": 2, "seeds": [7, 8]})
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    ts = trials(run_dir)
    assert len(ts) == 4 and len(trial_runs(run_dir)) == 4  # the sampler saw 4 trials, no more
    runs = confirm_runs(run_dir)
    # 2 best searched trials + 2 baselines, x 2 seeds
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert all("polyprune.trial" not in r.data.tags and r.data.tags["polyprune.kind"] == "confirm" for r in runs)
    assert sorted({r.data.tags["polyprune.confirm_seed"] for r in runs}) == ["7", "8"]
    assert {r.data.params["seed"] for r in runs} == {"7", "8"}
    searched = sorted((t for t in ts if "polyprune.baseline" not in t.user_attrs), key=lambda t: (t.values[0], t.number))
    labels = {r.data.tags["polyprune.confirm"] for r in runs}
    assert labels == {f"trial {searched[0].number}", f"trial {searched[1].number}", "uniform-wanda", "sw-only-wanda"}
    for r in runs:  # only the seed differs from the trial that is confirmed
        label = r.data.tags["polyprune.confirm"]
        t = next(t for t in ts if f"trial {t.number}" == label or t.user_attrs.get("polyprune.baseline") == label)
        assert r.data.params["calib"] == t.user_attrs["calib"]
    cl = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = cl.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    c = json.loads(Path(cl.download_artifacts(parent.info.run_id, "confirmation.json", str(run_dir))).read_text())
    assert c["winner"] in {f"trial {searched[0].number}", f"trial {searched[1].number}"} and len(c["vs"]) == 2
    win = next(e for e in c["candidates"] if e["label"] == c["winner"])
    other = next(e for e in c["candidates"] if e["label"] != c["winner"])
    assert win["valid_mean_sd"][0] <= other["valid_mean_sd"][0]  # on valid
    assert parent.data.tags["polyprune.confirmed"] == c["winner"].split()[1]
    assert "confirm.vs.uniform-wanda.p" in parent.data.metrics and "confirm.winner.test.ppl.sw.mean" in parent.data.metrics
    assert "confirmation:" in out and "vs uniform-wanda" in out and "level 0.05" in out
    # resumed: a deleted confirmation run is the only one run again; the study is untouched
    gone = runs[0]
    cl.delete_run(gone.info.run_id)
    assert main(["search", str(path)]) == 0
    again = confirm_runs(run_dir)
    assert len(again) == 8 and len(trials(run_dir)) == 4
    assert {r.info.run_id for r in again} - {r.info.run_id for r in runs} == {
        r.info.run_id for r in again if r.data.tags["polyprune.cell_id"] == gone.data.tags["polyprune.cell_id"]}
    # status shows the verdict
    capsys.readouterr()
    assert main(["status", "s", "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"]) == 0
    shown = capsys.readouterr().out
    assert "confirmed winner" in shown and "uniform-wanda" in shown
    # the report: a table and a figure
    report = run_dir / "report"
    assert main(["report", "s", "--out", str(report), "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"]) == 0
    assert (report / "confirmation_test_ppl.sw.png").is_file() and (report / "confirmation.csv").is_file()
    assert "Confirmation" in (report / "report.html").read_text()
    # register: the confirmed winner's model
    assert main(["register", "s", "--metric", "ppl.sw", "--as", "conf-best",
                 "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"]) == 0
    said = capsys.readouterr().out
    assert f"confirmed winner of search 's': {c['winner']}" in said


def test_confirm_false_runs_no_confirmation(ray_local, run_dir, capsys):
    path = write_search(run_dir, objectives=[{"metric": "ppl.sw"}], n_trials=3, confirm=False)
    assert main(["search", str(path)]) == 0
    assert confirm_runs(run_dir) == [] and "confirmation:" not in capsys.readouterr().out
