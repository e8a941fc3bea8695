"""`polyprune demo` end to end, shortened: the shipped demo model, a 3-cell sweep, a search of 5
baselines + 1 trial, its confirmation (1 selection seed, 2 test seeds) and the report — the same code path as the full demo. The first
run as a user runs it (a process of its own, its own Ray): the dense model's perplexities are README's
and its stderr holds no library's line; the resume runs on the session's Ray."""

from __future__ import annotations

import pytest

from helpers import ROOT, foreign, polyprune, short_home, user_env
from orchestrator.cli import main

# The shipped weights are the same everywhere (float32 evaluation of bfloat16 weights); what may differ
# between CPUs is the order of float32 sums, far below this.
README_TOLERANCE = 0.005  # relative


def table_row(text: str, first: str) -> dict[str, str]:
    """A row of a rich table (as printed, and as README shows it) by its first cell, keyed by the header."""
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("┃ model"))
    row = next(l for l in lines if l.startswith(f"│ {first} "))
    def cells(line, bar):
        return [c.strip() for c in line.strip().strip(bar).split(bar)]
    return dict(zip(cells(header, "┃"), cells(row, "│")))


def test_demo_runs_sweep_search_and_report(ray_local, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--calib", "en,sw", "--eval", "en,sw", "--nsamples", "4", "--limit", "2",
            "--trials", "1", "--confirm-top", "1", "--selection-seeds", "1", "--test-seeds", "2", "--out", str(out)]
    # The first run as a user runs it (its own Ray, a user's environment): its whole stderr is polyprune's
    with short_home("demo-") as home:
        done = polyprune(args, tmp_path, user_env(home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not foreign(done.stderr), done.stderr
    printed = done.stdout
    for row in ("dense", "wanda 0.65 en", "wanda 0.65 sw"):
        assert row in printed
    readme, here = table_row((ROOT / "README.md").read_text(), "dense"), table_row(printed, "dense")
    for col in ("ppl.en", "ppl.sw"):  # a newcomer's demo prints README's numbers
        assert float(here[col]) == pytest.approx(float(readme[col]), rel=README_TOLERANCE), (col, here, readme)
    baselines = ("wanda·uniform", "wanda·sw-only", "wanda·en-only", "wanda·mbs", "mwanda·uniform")  # the label names the method
    for name in baselines:  # every baseline, valid and test, before the best
        assert f"baseline {name}" in printed
    assert "best: trial" in printed and "vs wanda·uniform" in printed and "test ppl.mean" in printed
    best = next(line for line in printed.splitlines() if line.strip().startswith("best: trial"))
    assert "nan" not in best and "nan%" not in printed, best  # its test: measured by its held-out run
    assert "5 baselines" in printed and "then 1 searched trials screened, 1 promoted to full fidelity" in printed
    # the verdict closes the search: every baseline, with the seeds of each phase, interval, Holm and cost named
    verdict = printed[printed.index("confirmation:"):]
    assert "selection seeds 1;" in verdict and "test seeds 2, 3, which chose nothing" in verdict
    assert "paired t-test over 2 test seeds on log test ppl.mean" in verdict and "bootstrap over the test seeds and the evaluation windows" in verdict
    assert "level 0.05" in verdict and "mean ± sd over 2 test seeds" in verdict and "cost: selection 1 runs" in verdict
    for name in baselines:
        assert f" vs {name}: test ppl.mean" in verdict and "95% interval" in verdict
    assert (out / "report" / "report.html").exists() and (out / "mlflow.db").exists() and (out / "optuna.db").exists()
    assert "Inside the pruned model" in (out / "report" / "report.html").read_text()  # the demo runs `analyze`
    inside = printed[printed.index("inside the pruned models (polyprune analyze"):].splitlines()[1:5]
    assert all(" wanda 0.65 calibrated in " in l and "; CKA en " in l for l in inside[:2]), inside  # findings, not nothing
    assert any(l.startswith("  calibrating in a language ") for l in inside), inside
    # the last line runs as printed (tests/test_ui.py opens it in Chromium): the store, no name
    assert printed.splitlines()[-2] == f"all runs: polyprune ui --tracking-uri sqlite:///{out / 'mlflow.db'}"
    # a second run resumes: nothing new is pruned
    assert main(args) == 0
    assert "(0 now, 3 before)" in capsys.readouterr().out


def test_demo_bad_input(capsys, tmp_path):
    for args, field in ((["--calib", "xx"], "calib"), (["--eval", ""], "eval"), (["--trials", "-1"], "trials"),
                        (["--calib", "en"], "calib"), (["--test-seeds", "1"], "test-seeds"),
                        (["--selection-seeds", "0"], "selection-seeds"), (["--confirm-top", "0"], "confirm-top")):
        assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"polyprune demo: {field}:"), err
    assert not (tmp_path / "d").exists()
