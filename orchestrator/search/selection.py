"""The confirmation's selection stage (docs/search.md, "Confirmation"): the `confirm.top` best trials on
valid (first objective; feasible ones only when the file has constraints; one per distinct cell) are
re-run on each selection seed, a fresh calibration draw with the trial's mix, coefficients and schedule
unchanged (its cell, rebuilt by `cells.trial_cell`, on another seed). The winner is the candidate with
the best mean valid over the selection seeds. Its runs measure what a trial measures (valid only,
unless `test_every_trial`; test numbers here would never be looked at): the test seeds (`test_seeds`)
judge it.

The runs are tagged `polyprune.kind=confirm`, `polyprune.confirm=trial N`, `polyprune.confirm_seed`
and `polyprune.confirm_phase=selection`; they are not Optuna trials, and a rerun finds them by cell id.
"""

from __future__ import annotations

from typing import Any

from .cells import trial_cell
from .confirm import choose, winner
from .record import trial_dict
from .reruns import KIND_CONFIRM, FixedRuns, Reruns


class Selection:
    """The stage (docs/extending.md): plan once, run, then `winner()` for the test stage."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.seeds = ctx.cfg.confirm.selection_seeds
        self.sign = 1 if ctx.cfg.objectives[0].direction == "minimize" else -1
        self.reruns: Reruns | None = None
        self.runs = FixedRuns(ctx, KIND_CONFIRM, [])  # its runs, once planned (`reruns.runs`)
        self.candidates: list[dict[str, Any]] = []
        self.chosen: dict | None = None  # the winner, once asked for (after this stage ran)
        self.decided = False

    def pending(self) -> bool:
        if self.reruns is None:
            self.plan()
        return bool(self.runs.todo)

    def plan(self) -> None:
        """The candidates from the study as it stands (the trials' stage has run through) and their cells."""
        from optuna.trial import TrialState

        ctx, c = self.ctx, self.ctx.cfg.confirm
        trials = {t.number: t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        dicts = [{**trial_dict(t), "cell_id": t.user_attrs.get("cell_id")} for t in trials.values()]
        feasible = [d for d in dicts if all(v <= 0 for v in (trials[d["number"]].constraints or {}).values())]
        self.candidates = [{**d, "label": f"trial {d['number']}"} for d in choose(feasible, c.top, self.sign)]
        for e in self.candidates:
            e["cell"] = trial_cell(ctx.cfg, ctx.space, trials[e["number"]], ctx.n_blocks, ctx.ev)
        self.reruns = Reruns(ctx, "selection", [(e["label"], e["cell"]) for e in self.candidates], self.seeds)
        self.runs = self.reruns.runs

    def run(self):
        return self.runs.run(f"search {self.ctx.cfg.name}: confirmation, selection: {len(self.runs.todo)} runs to go (top "
                             f"{len(self.candidates)} trials x selection seeds {', '.join(map(str, self.seeds))})")

    def stop(self, status: str, why: str) -> None:
        self.runs.stop(status, why)

    def has_failures(self) -> bool:
        return self.runs.has_failures()

    def winner(self) -> dict | None:
        """The candidate with the best mean valid over every selection seed (None: none has them all).
        Asked once this stage has run through; the answer is kept."""
        if not self.decided:
            if self.reruns is None:
                self.plan()
            metric = self.ctx.metrics[0]
            for e in self.candidates:
                e["valid"] = self.reruns.values(e["label"], metric)
                e["runs"] = sorted(r["run_id"] for r in self.reruns.of(e["label"]).values())
            self.chosen, self.decided = winner(self.candidates, self.seeds, self.sign), True
        return self.chosen

    def finish(self, summary: dict[str, Any]) -> None:
        """summary["confirmation"]: the selection phase (a stage not reached says nothing)."""
        if self.reruns is None:
            return
        win, cfg = self.winner(), self.ctx.cfg
        summary["confirmation"] = {
            "metric": self.ctx.metrics[0], "direction": cfg.objectives[0].direction, "level": cfg.confirm.level,
            "selection_seeds": self.seeds, "test_seeds": cfg.confirm.test_seeds,
            "candidates": [{k: v for k, v in e.items() if k != "cell"} for e in self.candidates],
            "winner": win["label"] if win else None, "winner_number": win["number"] if win else None,
            "cost": {"selection": self.reruns.cost()}}
        if win is not None and win.get("mlflow_run_id") and self.ctx.rec:
            summary["confirmation"]["winner_trial"] = {**{k: v for k, v in win.items() if k != "cell"},
                                                      "test": self.ctx.rec.held_out(win["mlflow_run_id"])}
