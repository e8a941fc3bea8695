"""What the stages of fixed cells share (`FixedRuns`: the baselines, the held-out trials, the
confirmation's two phases) and what the confirmation's two stages (`selection`, `test_seeds`) share
(`Reruns`): an entry's cell re-run on each of its phase's seeds, tagged with its label, seed and
phase, and its results read back per label and seed."""

from __future__ import annotations

from typing import Any

from ..names import CONFIRM, CONFIRM_PHASE, CONFIRM_SEED
from ..engine.record import log
from ..engine.scheduler import FixedCells
from .cells import reseeded

KIND_CONFIRM = "confirm"  # the runs' polyprune.kind


class FixedRuns:
    """A stage's fixed cells, `entries` [(cell, its run's own tags, its run's name)] of run kind `kind`:
    each distinct cell runs once (two entries of one cell share the run the first one names), and a
    rerun finds the FINISHED ones again by cell id (`ctx.results(kind)`) and runs only the rest (`todo`)."""

    def __init__(self, ctx, kind: str, entries: list[tuple[Any, dict[str, str], str]]):
        self.ctx, self.kind, self.entries = ctx, kind, entries
        done, seen = ctx.results(kind), set()
        self.todo = []
        for cell, _, _ in entries:
            if cell.cell_id not in done and cell.cell_id not in seen:
                seen.add(cell.cell_id)
                self.todo.append(cell)
        self.total = len({cell.cell_id for cell, _, _ in entries})
        self.recorder = None

    def run(self, line: str):
        """(source, events) for the scheduler, after `line` says what is to run."""
        log(line)
        labels = {cell.cell_id: (tags, name) for cell, tags, name in reversed(self.entries)}  # the first entry names the run
        self.recorder = self.ctx.recorder(self.kind, labels, self.total, self.total - len(self.todo))
        return FixedCells(self.todo), self.recorder

    def stop(self, status: str, why: str) -> None:
        if self.recorder is not None:
            self.recorder.end_inflight(status, why)

    def has_failures(self) -> bool:
        return bool(self.recorder and self.recorder.failures)


class Reruns:
    """The runs of one phase: `entries` [(label, base cell)] x `seeds`, under one `SearchContext`."""

    def __init__(self, ctx, phase: str, entries: list[tuple[str, Any]], seeds: list[int]):
        self.ctx, self.phase, self.seeds = ctx, phase, seeds
        self.cells = [(label, s, reseeded(cell, s)) for label, cell in entries for s in seeds]
        self.runs = FixedRuns(ctx, KIND_CONFIRM, [(cell, {CONFIRM: label, CONFIRM_SEED: str(s), CONFIRM_PHASE: phase},
                                                   f"confirm {label} seed {s} ({phase})") for label, s, cell in self.cells])

    def of(self, label: str) -> dict[int, dict]:
        """seed -> the FINISHED run ({"run_id", "metrics", "model_id"}) of `label`'s cell at that seed."""
        done = self.ctx.results(KIND_CONFIRM)
        return {s: done[c.cell_id] for lab, s, c in self.cells if lab == label and c.cell_id in done}

    def values(self, label: str, metric: str) -> dict[int, float]:
        return {s: r["metrics"][metric] for s, r in self.of(label).items() if metric in r["metrics"]}

    def cost(self) -> dict[str, float]:
        """The phase's runs (one per distinct cell) and their cells' seconds, this run's and earlier ones'."""
        done = self.ctx.results(KIND_CONFIRM)
        ids = {c.cell_id for _, _, c in self.cells}
        return {"runs": len(ids), "cell_s": sum(done[i]["metrics"].get("time.cell_s", 0.0) for i in ids if i in done)}
