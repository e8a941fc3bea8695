"""Ray for one command: `RaySession`, opened by the CLI (or by `lifecycle.drive` for a caller that
names only an address) and passed down to the driver; its exit shuts down only what it started.

One start path: Ray is joined or started, and the first stage's worker actors spawned, by the
session's own thread. Ray ties the processes it starts (GCS, raylet, ...) to the *thread* that
started them (PR_SET_PDEATHSIG), so that thread lives until the session closes, and shuts Ray down.

When that thread begins is the one option, `early` (default on; POLYPRUNE_EARLY_RAY=0 turns it off):
- early: `ahead` begins a local Ray while the CLI validates the file (after a short grace: a file
  refused at once starts nothing), and `prepare` begins it, at the latest, while the driver creates a
  new sqlite store (seconds of MLflow's schema): the driver's own start-up overlaps Ray's;
- not early: Ray begins when the driver needs it (`driving`), once the store, lease and job are open.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from tasks.errors import UserError

from .scheduler import RAY_LOGS, Interrupt, WorkerPool

EARLY = "POLYPRUNE_EARLY_RAY"  # 0: Ray begins only when the driver needs it (benchmarks/sweep_overhead.py --startup)
AHEAD_GRACE_S = 0.5  # most bad files are refused within this (unknown keys, missing folders): no Ray for them


class RaySession:
    """Ray for one command (a context manager). The driver calls `check` (the address answers),
    `prepare` (its first stage's workers), then runs inside `driving`; `take_pool` hands the actors
    started with Ray to the first stage. `interrupt` is the loop's stop flag: Ctrl-C, SIGTERM and a
    lost lease set it."""

    def __init__(self, address: str | None = None, early: bool | None = None):
        self.address = address
        self.early = os.environ.get(EARLY, "1") != "0" if early is None else early
        self.interrupt = Interrupt()
        self.resources, self.log = None, print
        self.owns_ray, self.pool, self.error, self.joined, self.ahead_begun = False, None, None, False, False
        self.said: list[str] = []  # the pool's lines, shown once joined: a refused driver says one line only
        self.thread: threading.Thread | None = None
        self.ready, self.given, self.cancel, self.over = (threading.Event() for _ in range(4))

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, kind, error, tb) -> None:
        # A start begun ahead that no driver joined, left by an error (a refused file or lease): undone
        # while that error's one line is printed; the interpreter waits for the thread before exiting.
        self.close(wait=kind is None or self.joined or not self.ahead_begun)

    def ahead(self) -> None:
        """Begin a local Ray (no cluster named) now, while the caller validates its file: seconds of
        imports and checks that Ray's own seconds of start-up then overlap (when `early`)."""
        if self.early and self.address in (None, "local") and not os.environ.get("RAY_ADDRESS") and self.thread is None:
            self.ahead_begun = True
            self.begin(AHEAD_GRACE_S)

    def check(self) -> None:
        check_address(self.address)

    def prepare(self, resources, log: Callable[[str], None], new_store: bool) -> None:
        """The first stage's workers, spawned as soon as Ray is up. Ray begins now in the background
        (when `early`) if the driver is about to create its store: an existing store opens at once and
        may hold every cell already, so then Ray begins only if needed (`driving`)."""
        self.resources, self.log = resources, log
        self.given.set()
        if self.early and new_store and self.thread is None:
            self.begin(0.0)

    def begin(self, grace_s: float = 0.0) -> None:
        self.thread = threading.Thread(target=self._run, args=(grace_s,), name="polyprune-ray")
        self.thread.start()

    def _run(self, grace_s: float) -> None:
        try:
            if self.cancel.wait(grace_s):  # undone before it began (a file refused at once): no Ray at all
                return
            self.owns_ray = connect(self.address)
            self.given.wait()  # a start begun ahead learns its workers once the file is read (`prepare`)
            if self.resources is not None and not self.cancel.is_set():
                self.pool = WorkerPool(self.resources, self.said.append)
        except BaseException as e:  # re-raised in the driver's thread by `join`
            self.error = e
        finally:
            self.ready.set()
        self.over.wait()
        if self.pool is not None:
            self.pool.shutdown()  # a no-op for actors the stage already ended
        if self.owns_ray:
            import ray

            ray.shutdown()

    def join(self) -> None:
        """Ray is up (begun now if not yet) and its workers spawned, or the start's error is raised."""
        if self.thread is None:
            self.begin(0.0)
        self.given.set()  # prepared or not: no start waits for workers forever
        self.ready.wait()
        if self.error is not None:
            raise self.error
        self.joined = True
        for line in self.said:
            self.log(line)

    def take_pool(self) -> WorkerPool | None:
        """The actors started with Ray, once (for the first stage; later stages start their own)."""
        pool, self.pool = self.pool, None
        return pool

    @contextmanager
    def driving(self, needed: bool = True, lease=None) -> Iterator[None]:
        """A driver's run: Ray joined (when `needed`) and the lease's cluster layer taken
        (`lease.claim_ray`), SIGTERM taken as Ctrl-C meanwhile: `ray job stop` and batch schedulers
        send SIGTERM, and in-flight runs should then end KILLED, as on Ctrl-C. Either one, inside the
        scheduler's loop, stops it at its next turn (`on_signal`)."""
        if needed:
            self.join()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if needed and lease is not None:
                lease.claim_ray()  # refused: one line, and Ray is shut down when the session closes
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_signal(self, signum, frame) -> None:
        """Inside the scheduler's loop: stop at its next turn (within a second); elsewhere, or a
        second time: at once."""
        if self.interrupt.looping.is_set() and not self.interrupt.stop.is_set():
            self.interrupt.stop.set()
            return
        raise KeyboardInterrupt

    def close(self, wait: bool = True) -> None:
        """Shut down what this session started (its actors, and Ray if it started it); `wait=False`:
        let the session's thread do it while the caller goes on."""
        if self.thread is None:
            return
        if not self.joined:
            self.cancel.set()
        self.given.set()  # a start still waiting for its workers stops at Ray
        self.over.set()
        if wait:
            self.thread.join()


def connect(address: str | None) -> bool:
    """Join (or start) Ray; False when this process is already connected (tests, notebooks)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    # Ray's INFO lines ("Started a local Ray instance", ...) with --verbose only (orchestrator/cli/noise.py)
    level = getattr(logging, os.environ.get("POLYPRUNE_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    kwargs = {"logging_level": level, "log_to_driver": RAY_LOGS}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a private local Ray: nobody to show a dashboard to
    quiet = logging.getLogger("ray._private.worker")
    before = quiet.level
    if threading.current_thread() is not threading.main_thread():
        quiet.setLevel(logging.ERROR)  # "SIGTERM handler is not set": `driving` sets ours in the main thread
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError("ray-address", f"cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from None
    finally:
        quiet.setLevel(before)
    return True


def check_address(address: str | None) -> None:
    """The Ray address (else RAY_ADDRESS), HOST:PORT or ray://HOST:PORT, must accept a TCP connection
    within the probe timeout: Ray itself retries an address nobody listens on for minutes. Drivers
    probe it before creating anything (`RaySession.check`). (None, "auto": a local Ray, or Ray's to find.)"""
    import socket

    from ..stores import PROBE_TIMEOUT_S

    address = address or os.environ.get("RAY_ADDRESS") or ""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise UserError("ray-address", f"nothing answers at {address!r} ({e.strerror or e}); "
                                       f"start Ray there (ray start --head) or fix the address") from None
