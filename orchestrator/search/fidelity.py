"""Intermediate values of a search's trials, for its pruner (docs/search.md, `pruner:`).

Step i of a trial is the valid perplexity of its i-th evaluation language, posted by the worker
as that language finishes (`sweep.worker.Reporter`) to a `Mailbox`, a small Ray actor the
driver reads once per scheduler turn: it reports each value to the trial (`trial.report`), asks
the pruner (`trial.should_prune`) and, if so, halts the trial; the worker sees the halt at its
next language (or before the test pass) and ends the cell early. The trial is told PRUNED, its
MLflow run ends KILLED with the tag `PRUNED`, and its cell seconds are only what it ran.
A pruned trial counts in the budget and is never re-run on resume (`study.counted`).
"""

from __future__ import annotations

from typing import Any

from .. import tracking
from ..names import PRUNED
from ..sweep.record import log


class Mailbox:
    """Values posted by workers, halts set by the driver (a Ray actor: `open_mailbox`)."""

    def __init__(self):
        self.values: list[tuple[int, int, float]] = []
        self.stopped: set[int] = set()
        self.seen: set[tuple[int, int]] = set()

    def post(self, trial: int, step: int, value: float) -> bool:
        if (trial, step) not in self.seen:  # a retried cell posts its steps again: Optuna takes each once
            self.seen.add((trial, step))
            self.values.append((trial, step, value))
        return trial in self.stopped

    def halted(self, trial: int) -> bool:
        return trial in self.stopped

    def halt(self, trial: int) -> None:
        self.stopped.add(trial)

    def take(self) -> list[tuple[int, int, float]]:
        out, self.values = self.values, []
        return out


def open_mailbox(cfg):
    """The search's mailbox (Ray is up), or None when it has no pruner."""
    if (cfg.pruner or {}).get("name", "none") == "none":
        return None
    import ray

    return ray.remote(Mailbox).options(num_cpus=0).remote()


def close(box) -> None:
    if box is not None:
        import ray

        ray.kill(box)


def attach(box, cell, number: int) -> None:
    """Tell the trial's cell where to post (the worker reads `run["report"]`)."""
    if box is not None:
        cell.run = {**cell.run, "report": {"box": box, "trial": number}}


def poll(box, flights: dict[int, Any]) -> None:
    """Report what the workers posted and halt the trials the pruner stops."""
    if box is None:
        return
    import ray

    by_number = {f.trial.number: f for f in flights.values()}
    for number, step, value in ray.get(box.take.remote()):
        f = by_number.get(number)
        if f is None:  # already told
            continue
        f.trial.report(value, step)
        if f.trial.should_prune():
            box.halt.remote(number)


def pruned(search, cell, out: dict[str, Any]) -> None:
    """End a cell its worker stopped on the pruner's word: KILLED run tagged PRUNED, trial told PRUNED."""
    from optuna.trial import TrialState

    f = search.flights.pop(id(cell))
    langs = search.ev["ppl"]["languages"]
    why = f"pruned by {search.cfg.pruner['name']} after {out['pruned'] + 1} of {len(langs)} valid languages"
    tracking.log_metrics(search.rec.cl, f.run_id, out["metrics"])
    tracking.fail_cell(search.rec.cl, f.run_id, why, status="KILLED", tags={**out.get("tags", {}), PRUNED: str(out["pruned"])})
    search.study.tell(f.trial, state=TrialState.PRUNED)
    search.told += 1
    log(f"PRUNED   trial {f.trial.number}: {why}  {out['metrics'].get('time.cell_s', 0):.1f}s")
