"""THE execution loop of sweeps and searches: cells on a pool of long-lived Ray actors
(`worker.CellRunner`), in completion order.

The scheduler is fed by a `Source` of cells (a fixed list for sweeps, `FixedCells`;
the study's ask side for searches, `search.trials.Trials`) and knows Ray and nothing
of MLflow or Optuna: the caller gets `start`, `done`, `failed` and `retry` events
and owns the record. Rules:
- one actor per `gpus_per_cell` GPUs when the cluster has GPUs (Ray gives each its
  own devices), else `cpu_workers` CPU actors;
- at most two cells queued per actor (one running, one waiting, so the actor never
  idles while the driver records) and `max_in_flight` in all;
- an actor prefers cells of the model it already holds, so it reloads rarely;
- an actor or node that dies fails its queued calls: the cell it was running is
  retried elsewhere up to `max_retries` times, the ones only waiting behind it are
  requeued for free (both before any new cell), and a replacement actor is started;
- an actor that cannot even start is replaced; after 2 x pool size such failures with
  no actor up, the run stops (RuntimeError);
- when no actor can be placed for `WORKER_WAIT_S`, the cells still owed fail.
Drivers run this loop only through `lifecycle.drive` (inside `RaySession.driving`: Ray connected or
started, SIGTERM taken as Ctrl-C), once per stage.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

PER_WORKER = 2
WORKER_WAIT_S = float(os.environ.get("POLYPRUNE_WORKER_WAIT_S", 600))  # give up when no actor can be placed this long
CELL_DELAY_S = float(os.environ.get("POLYPRUNE_CELL_DELAY_S", 0))  # test hook: slow cells to kill them mid-flight
RAY_LOGS = os.environ.get("POLYPRUNE_RAY_LOGS", "") == "1"  # forward worker stdout/stderr to the driver


@dataclass
class Interrupt:
    """Ctrl-C / SIGTERM while the loop runs (`RaySession.on_signal`), or a lost lease: `stop` is set and
    the loop stops at its next turn, so the interrupt never lands inside an MLflow write and leaves the
    store locked mid-transaction. `looping`: the loop is running (elsewhere a signal interrupts at once)."""

    stop: threading.Event = field(default_factory=threading.Event)
    looping: threading.Event = field(default_factory=threading.Event)


class Source(Protocol):
    """Where cells come from. `more` is asked once per scheduler turn (about every second)."""

    def take(self, model: str | None): ...  # the next cell, preferring `model`; None when none is due now
    def more(self) -> bool: ...  # will `take` give cells later? (the loop ends when not, and nothing is in flight)
    def close(self, why: str) -> list: ...  # no worker can be placed: stop; the cells still owed, to fail


class Events(Protocol):
    def start(self, cell) -> None: ...
    def done(self, cell, out: dict[str, Any]) -> None: ...
    def failed(self, cell, error: str, detail: str, tags: dict[str, str]) -> None: ...
    def retry(self, cell, error: str, attempt: int) -> None: ...


class FixedCells:
    """A sweep's cells, each taken once."""

    def __init__(self, cells: list):
        self.pending = deque(cells)

    def take(self, model: str | None):
        """The next cell, preferring the model the actor already holds (so it reloads rarely)."""
        if not self.pending:
            return None
        if model is not None:
            for i, cell in enumerate(self.pending):
                if cell.model == model:
                    del self.pending[i]
                    return cell
        return self.pending.popleft()

    def more(self) -> bool:
        return bool(self.pending)

    def close(self, why: str) -> list:
        owed, self.pending = list(self.pending), deque()
        return owed


@dataclass
class Worker:
    actor: Any
    ready_ref: Any
    info: dict[str, Any] | None = None  # set once the actor answered ready()
    model: str | None = None  # model of the last cell sent to it
    queue: list = field(default_factory=list)  # result refs in dispatch order
    dead: bool = False


class WorkerPool:
    def __init__(self, resources, log: Callable[[str], None] = print):
        import ray

        from .worker import CellRunner

        total = ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
        if gpus >= resources.gpus_per_cell:
            self.size = int(gpus // resources.gpus_per_cell)
            threads = resources.cpus_per_worker or 1
            opts = {"num_gpus": resources.gpus_per_cell, "num_cpus": threads}
            log(f"{self.size} GPU workers ({resources.gpus_per_cell:g} GPU each)")
        else:
            self.size = resources.cpu_workers
            if cpus and self.size > cpus:
                log(f"cpu_workers={self.size} but the cluster has {cpus:g} CPUs: using {int(cpus)} workers")
                self.size = max(1, int(cpus))
            threads = resources.cpus_per_worker or (max(1, int(cpus // self.size)) if cpus else 1)
            opts = {"num_cpus": threads}
            log(f"{self.size} CPU workers ({threads} CPU each; the cluster has no GPUs)")
        # SPREAD: one actor per node where possible, so a lost node costs few cells.
        self._cls = ray.remote(CellRunner).options(**opts, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD")
        self._threads = threads
        self.max_in_flight = resources.max_in_flight or PER_WORKER * self.size
        self.workers: list[Worker] = []
        for _ in range(self.size):
            self.spawn()

    def spawn(self) -> None:
        actor = self._cls.remote(self._threads)
        self.workers.append(Worker(actor, actor.ready.remote()))

    def starting(self) -> dict[Any, Worker]:
        return {w.ready_ref: w for w in self.workers if w.info is None and not w.dead}

    def ready(self) -> list[Worker]:
        return [w for w in self.workers if w.info is not None and not w.dead]

    def retire(self, w: Worker) -> None:
        import ray

        w.dead = True
        try:
            ray.kill(w.actor)
        except Exception:
            pass

    def shutdown(self) -> None:
        for w in self.workers:
            if not w.dead:
                self.retire(w)


def death_errors():
    from ray import exceptions as rx

    return (rx.RayActorError, rx.WorkerCrashedError, rx.ObjectLostError, rx.OwnerDiedError,
            rx.LocalRayletDiedError, rx.NodeDiedError, rx.OutOfMemoryError)


def run_cells(source: Source, resources, events: Events, log: Callable[[str], None] = print, delay_s: float = CELL_DELAY_S,
              pool: WorkerPool | None = None, interrupt: Interrupt | None = None) -> None:
    """Run every cell `source` gives once (plus retries after worker deaths). KeyboardInterrupt
    propagates after the actors are killed; the caller ends its in-flight records. `pool`: the
    caller's actors (started ahead, or serving several stages: the caller shuts them down), else
    they are started here and shut down on the way out; `interrupt`: the session's stop flag (the
    loop raises KeyboardInterrupt at its next turn once it is set)."""
    import ray

    death = death_errors()
    owned = pool is None
    pool = pool or WorkerPool(resources, log)
    again: deque = deque()  # cells back from a dead worker: sent before new ones
    inflight: dict[Any, tuple[Any, Worker]] = {}
    attempts: Counter = Counter()  # by cell identity: two trials may share a cell id
    start_failures, idle_since = 0, time.monotonic()

    def dispatch() -> None:
        # Fill every actor's first slot before anyone's second, so all actors start at once.
        for slot in range(PER_WORKER):
            for w in sorted(pool.ready(), key=lambda w: len(w.queue)):
                if len(inflight) >= pool.max_in_flight or len(w.queue) > slot:
                    continue
                cell = again.popleft() if again else source.take(w.model)
                if cell is None:
                    return
                events.start(cell)
                ref = w.actor.run.remote(cell.task(delay_s))
                w.model = cell.model
                w.queue.append(ref)
                inflight[ref] = (cell, w)

    def worker_died(w: Worker, error: str) -> None:
        """Settle every call queued on a dead actor: keep finished results, charge the running one."""
        pool.retire(w)
        charged, back = False, []
        for ref in list(w.queue):
            cell, _ = inflight.pop(ref)
            try:
                out = ray.get(ref)  # a result may have come back before the death
            except death as e:
                out, error = None, one_line(e)
            if out is not None:
                deliver(events, cell, out)
            elif not charged:  # the first unfinished call is the one that was running
                charged = True
                attempts[id(cell)] += 1
                if attempts[id(cell)] > resources.max_retries:
                    events.failed(cell, f"worker died {attempts[id(cell)]} times; last: {error}", error, {})
                else:
                    events.retry(cell, error, attempts[id(cell)])
                    back.append(cell)
            else:
                back.append(cell)
        again.extendleft(reversed(back))
        w.queue.clear()
        if again or source.more():
            pool.spawn()

    interrupt = interrupt or Interrupt()
    interrupt.stop.clear()
    interrupt.looping.set()
    try:
        while source.more() or again or inflight:
            if interrupt.stop.is_set():
                raise KeyboardInterrupt
            dispatch()
            starting = pool.starting()
            refs = list(inflight) + list(starting)
            if not refs:  # nothing running and no actor coming: cannot happen unless all spawns were refused
                pool.spawn()
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if inflight or pool.ready():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > WORKER_WAIT_S:
                why = f"no worker could be placed in {WORKER_WAIT_S:g}s (cluster resources: {ray.cluster_resources()})"
                for cell in [*again, *source.close(why)]:
                    events.failed(cell, why, "", {})
                break
            if not ready:
                continue
            ref = ready[0]
            if ref in starting:
                w = starting[ref]
                try:
                    w.info = ray.get(ref)
                except Exception as e:  # the actor could not even start
                    start_failures += 1
                    pool.retire(w)
                    log(f"worker failed to start: {one_line(e)}")
                    if start_failures > 2 * pool.size and not pool.ready():
                        raise RuntimeError(f"workers cannot start: {e}") from None
                    pool.spawn()
                continue
            cell, w = inflight[ref]
            try:
                out = ray.get(ref)
            except death as e:
                worker_died(w, one_line(e))
                continue
            except Exception as e:  # RayTaskError: run() itself broke (it catches cell errors)
                out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}", "traceback": str(e)}
            del inflight[ref]
            w.queue.remove(ref)
            deliver(events, cell, out)
    finally:
        interrupt.looping.clear()
        if owned:
            pool.shutdown()


def deliver(events: Events, cell, out: dict[str, Any]) -> None:
    if out.get("ok"):
        events.done(cell, out)
    else:
        events.failed(cell, out.get("error", "unknown error"), out.get("traceback", ""), out.get("tags", {}))


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
