"""Early stopping of a search's trials: the pruner's mailbox (docs/search.md, `pruner:`; the pruners
themselves are built in `sampling`).

Step i of a trial is the valid perplexity of its i-th evaluation language, posted by the worker
as that language finishes (`engine.worker.Reporter`) to a `Mailbox`, a small Ray actor a driver
thread listens to: it reports each value to the trial (`trial.report`), asks the pruner
(`trial.should_prune`) and rules; the worker waits for the verdict and, pruned, ends the cell
there (no further language, no test pass). The trial is told PRUNED, its
MLflow run ends KILLED with the tag `PRUNED`, and its cell seconds are only what it ran.
A pruned trial counts in the budget and is never re-run on resume (`study.counted`).
"""

from __future__ import annotations

from typing import Any

from .. import tracking
from ..names import PRUNED
from ..engine.record import log
from .sampling import prunes


# How long a worker waits for the driver's verdict on a step before it goes on (a busy store).
VERDICT_WAIT_S = 10.0


class Mailbox:
    """Values posted by workers, verdicts from the driver (an async Ray actor: `open_mailbox`).
    A worker's `post` returns once the driver ruled on that step: pruning is exact, not a step late."""

    def __init__(self):
        import asyncio

        self.values: list[tuple[int, int, float]] = []
        self.new, self.ruled = asyncio.Event(), {}  # (trial, step) -> asyncio.Event
        self.stopped: set[int] = set()

    async def post(self, trial: int, step: int, value: float) -> bool:
        import asyncio

        if (trial, step) not in self.ruled:  # a retried cell posts its steps again: Optuna takes each once
            self.ruled[(trial, step)] = asyncio.Event()
            self.values.append((trial, step, value))
            self.new.set()
        try:
            await asyncio.wait_for(self.ruled[(trial, step)].wait(), VERDICT_WAIT_S)
        except asyncio.TimeoutError:
            pass
        return trial in self.stopped

    async def take(self, timeout_s: float) -> list[tuple[int, int, float]]:
        import asyncio

        try:
            await asyncio.wait_for(self.new.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        out, self.values = self.values, []
        self.new.clear()
        return out

    async def rule(self, trial: int, step: int, prune: bool) -> None:
        if prune:
            self.stopped.add(trial)
        self.ruled[(trial, step)].set()


class Listener:
    """The driver's side: a thread that takes the posted values, reports each to its trial and
    rules (Optuna's pruners run in the driver; its storages take calls from threads, as
    `study.optimize(n_jobs=...)` makes them)."""

    def __init__(self, box, flights: dict[int, Any]):
        import threading

        self.box, self.flights, self.done = box, flights, threading.Event()
        self.thread = threading.Thread(target=self.listen, name="polyprune-pruner", daemon=True)
        self.thread.start()

    def listen(self) -> None:
        import ray

        while not self.done.is_set():
            try:
                batch = ray.get(self.box.take.remote(0.5))
            except Exception as e:  # Ray going down with the driver
                log(f"pruner: {type(e).__name__}: {e}")
                return
            by_number = {f.trial.number: f for f in list(self.flights.values())}
            for number, step, value in batch:
                f, prune = by_number.get(number), False
                try:
                    if f is not None:
                        f.trial.report(value, step)
                        prune = f.trial.should_prune()
                except Exception as e:  # told meanwhile (finished, or lost on a stop): no verdict to give
                    log(f"pruner: trial {number} step {step}: {type(e).__name__}: {e}")
                self.box.rule.remote(number, step, prune)

    def close(self) -> None:
        import ray

        self.done.set()
        self.thread.join()
        ray.kill(self.box)


def open_mailbox(cfg, flights: dict[int, Any]):
    """The search's listener (Ray is up), or None when it has no pruner."""
    if not prunes(cfg.pruner):
        return None
    import ray

    return Listener(ray.remote(Mailbox).options(num_cpus=0).remote(), flights)


def close(listener) -> None:
    if listener is not None:
        listener.close()


def attach(listener, cell, number: int) -> None:
    """Tell the trial's cell where to post (the worker reads `run["report"]`)."""
    if listener is not None:
        cell.run = {**cell.run, "report": {"box": listener.box, "trial": number}}


def pruned(trials, cell, out: dict[str, Any]) -> None:
    """End a cell its worker stopped on the pruner's word (`trials`: the trials' stage): KILLED run
    tagged PRUNED, trial told PRUNED."""
    from optuna.trial import TrialState

    ctx = trials.ctx
    f = trials.flights.pop(id(cell))
    langs = ctx.ev["ppl"]["languages"]
    why = f"pruned by {ctx.cfg.pruner['name']} after {out['pruned'] + 1} of {len(langs)} valid languages"
    tracking.log_metrics(ctx.rec.cl, f.run_id, out["metrics"])
    tracking.fail_cell(ctx.rec.cl, f.run_id, why, status="KILLED", tags={**out.get("tags", {}), PRUNED: str(out["pruned"])})
    ctx.study.tell(f.trial, state=TrialState.PRUNED)
    trials.told += 1
    log(f"PRUNED   trial {f.trial.number}: {why}  {out['metrics'].get('time.cell_s', 0):.1f}s")
