"""The held-out stage (docs/search.md, "Valid and test"): the test split of the trials a search reports.

A trial measures valid only (`cells.trial_evaluation`, unless the file says `test_every_trial: true`),
so test is measured here, for what the summary quotes: the study's best trial(s) on valid (the Pareto
front with several objectives) and the confirmation's winner (`selection.winner()`), each one whose
trial run holds no `test.*` metrics. Each is a fixed cell: the trial's own cell (`cells.trial_cell`,
the same prune at the search's seed) evaluated on test only (`cells.held_out_evaluation`: a cell id of
its own), its metrics named `test.*` as a trial's test pass names them.

The runs are tagged `polyprune.kind=held-out` and `polyprune.held_out=N` (the trial's number); a rerun
finds them by cell id and runs only what has no FINISHED run. `finish` fills the summary's empty test
numbers (`best[i]["test"]`, `confirmation.winner_trial.test`) from them; it runs after the trials' and
the selection's `finish` (stages finish in list order). With `test_every_trial: true` there is nothing
to do: the trials' own runs hold their test numbers.
"""

from __future__ import annotations

from typing import Any

from ..names import HELD_OUT
from .cells import held_out_evaluation, trial_cell
from .reruns import FixedRuns
from .study import best_trials

KIND_HELD_OUT = "held-out"  # the runs' polyprune.kind


class HeldOut:
    """The stage (docs/extending.md), composed with the selection (its winner), or None without `confirm:`."""

    def __init__(self, ctx, selection=None):
        self.ctx, self.selection = ctx, selection
        self.ev = None if ctx.cfg.test_every_trial else held_out_evaluation(ctx.cfg)
        self.cells: dict[int, Any] | None = None  # trial number -> its held-out cell (planned when reached)
        self.runs = FixedRuns(ctx, KIND_HELD_OUT, [])

    def pending(self) -> bool:
        if self.cells is None:
            self.plan()
        return bool(self.runs.todo)

    def plan(self) -> None:
        """The reported trials without test numbers, from the study as it stands (the trials and the
        selection have run through), and their held-out cells."""
        from optuna.trial import TrialState

        ctx, self.cells = self.ctx, {}
        if self.ev is None:
            return
        trials = {t.number: t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        numbers = {t.number for t in best_trials(ctx.study, len(ctx.metrics))}
        win = self.selection.winner() if self.selection is not None else None
        if win is not None:
            numbers.add(win["number"])
        ran = ctx.results("trial")  # the trials' runs FINISHED before this driver; its own measured ctx.ev
        for n in sorted(x for x in numbers if x in trials):
            run = ran.get(trials[n].user_attrs.get("cell_id")) or {}
            if not any(k.startswith("test.") for k in run.get("metrics", {})):
                self.cells[n] = trial_cell(ctx.cfg, ctx.space, trials[n], ctx.n_blocks, self.ev)
        # two trials of one cell run it once
        self.runs = FixedRuns(ctx, KIND_HELD_OUT, [(cell, {HELD_OUT: str(n)}, f"held-out trial {n}") for n, cell in self.cells.items()])

    def run(self):
        return self.runs.run(f"search {self.ctx.cfg.name}: held out: {len(self.runs.todo)} of {self.runs.total} to run (the test "
                             f"split of trials {', '.join(map(str, self.cells))})")

    def stop(self, status: str, why: str) -> None:
        self.runs.stop(status, why)

    def has_failures(self) -> bool:
        return self.runs.has_failures()

    def finish(self, summary: dict[str, Any]) -> None:
        """The empty test numbers of the best trials and of the confirmation's winner, from their
        held-out runs (a stage not reached says nothing)."""
        if not self.cells:
            return
        done = self.ctx.results(KIND_HELD_OUT)
        for t in [*(summary.get("best") or []), (summary.get("confirmation") or {}).get("winner_trial")]:
            cell = self.cells.get(t["number"]) if t else None
            r = done.get(cell.cell_id) if cell else None
            if r and not t.get("test"):
                t["test"] = {k: v for k, v in r["metrics"].items() if k.startswith("test.")}
                t["held_out_run_id"] = r["run_id"]

