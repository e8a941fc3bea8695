"""What the confirmation's two stages (`selection`, `test_seeds`) share: an entry's cell re-run on each
of its phase's seeds, found again by cell id on a rerun, tagged with its label, seed and phase; and
reading a phase's results back per label and seed."""

from __future__ import annotations

from typing import Any

from ..names import CONFIRM, CONFIRM_PHASE, CONFIRM_SEED
from ..engine.scheduler import FixedCells
from .cells import reseeded

KIND_CONFIRM = "confirm"  # the runs' polyprune.kind


class Reruns:
    """The runs of one phase: `entries` [(label, base cell)] x `seeds`, under one `SearchContext`."""

    def __init__(self, ctx, phase: str, entries: list[tuple[str, Any]], seeds: list[int]):
        self.ctx, self.phase, self.seeds = ctx, phase, seeds
        self.cells = [(label, s, reseeded(cell, s)) for label, cell in entries for s in seeds]
        done, seen = ctx.results(KIND_CONFIRM), set()
        self.todo = []
        for _, _, cell in self.cells:  # two labels of one cell run it once
            if cell.cell_id not in done and cell.cell_id not in seen:
                seen.add(cell.cell_id)
                self.todo.append(cell)
        self.recorder = None

    def run(self):
        labels = {}
        for label, seed, cell in reversed(self.cells):  # the first label of a shared cell names its run
            labels[cell.cell_id] = ({CONFIRM: label, CONFIRM_SEED: str(seed), CONFIRM_PHASE: self.phase},
                                    f"confirm {label} seed {seed} ({self.phase})")
        n = len({c.cell_id for _, _, c in self.cells})
        self.recorder = self.ctx.recorder(KIND_CONFIRM, labels, n, n - len(self.todo))
        return FixedCells(self.todo), self.recorder

    def stop(self, status: str, why: str) -> None:
        if self.recorder is not None:
            self.recorder.end_inflight(status, why)

    def has_failures(self) -> bool:
        return bool(self.recorder and self.recorder.failures)

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
