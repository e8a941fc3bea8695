"""A driver's session with Ray: `driving` (Ray joined or started, the lease's cluster layer
taken, SIGTERM taken as Ctrl-C) and `Starting` (all of that begun in the background, so a
driver's own start-up overlaps Ray's; `speculate`: a local Ray begun even before the file is
validated, undone when the file is refused)."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from tasks.errors import UserError

from ..tracking import sqlite_path
from .scheduler import LOOPING, RAY_LOGS, STOP, WorkerPool


class Starting:
    """Ray joined or started, and the worker actors spawned, in a background thread: the
    driver's own start-up (creating the MLflow store, the lease, the parent run) overlaps
    Ray's start and the actors' imports instead of preceding them. `driving(..., started=)`
    waits for it and takes it over; `pool` hands the actors to `run_cells`. A driver that
    stops before that (refused lease, bad store) calls `abandon`."""

    def __init__(self, address: str | None, resources, log: Callable[[str], None] = print, grace_s: float = 0.0):
        self.address, self.resources, self.log, self.grace_s = address, resources, log, grace_s
        self.owns_ray, self.pool, self.error, self.taken = False, None, None, False
        self.said: list[str] = []  # the pool's lines, shown once taken: a refused driver says one line only
        self.ready, self.over, self.given, self.cancel = (threading.Event() for _ in range(4))
        if resources is not None:
            self.given.set()
        threading.Thread(target=self._start, name="polyprune-ray-start", daemon=True).start()

    def _start(self) -> None:
        try:
            if self.cancel.wait(self.grace_s):  # undone before it began (a file refused at once): no Ray at all
                return
            self.owns_ray = connect(self.address)
            self.given.wait()  # a speculative start learns its workers once the file is read (`use`)
            if self.resources is not None:
                self.pool = WorkerPool(self.resources, self.said.append)
        except BaseException as e:  # re-raised in the driver's thread by wait()
            self.error = e
        finally:
            self.ready.set()
        # Ray ties the processes it starts (GCS, raylet, ...) to the *thread* that started them
        # (PR_SET_PDEATHSIG): this thread must outlive them, until Ray is shut down.
        self.over.wait()

    def use(self, resources, log: Callable[[str], None]) -> None:
        """The workers of a start begun before the file was read (`speculate`), once it is valid."""
        self.resources, self.log = resources, log
        self.given.set()

    def wait(self) -> bool:
        """Ray is up (or the start's error is raised); True when this process started it."""
        self.ready.wait()
        if self.error is not None:
            raise self.error
        return self.owns_ray

    def show(self) -> None:
        for line in self.said:
            self.log(line)

    def end(self) -> None:
        self.over.set()

    def abandon(self) -> None:
        """Undo the start unless `driving` took it over (then Ray is its to shut down)."""
        if self in SPECULATIVE:
            SPECULATIVE.remove(self)
        if self.taken or self.over.is_set():
            return
        self.cancel.set()
        self.given.set()  # a speculative start still waiting for its workers stops at Ray
        self.ready.wait()
        if self.pool is not None:
            self.pool.shutdown()
        if self.owns_ray:
            import ray

            ray.shutdown()
        self.end()


@contextmanager
def starting(store_uri: str, address: str | None, resources, log: Callable[[str], None] = print) -> Iterator[Starting | None]:
    """A driver's start-up, before it creates anything: the Ray address probed (`check_address`);
    then, when `store_uri` is a sqlite store still to be created (seconds of MLflow's schema), Ray and
    the workers started meanwhile (`Starting`), else None: an existing store opens at once and may hold
    every cell already, so Ray starts only if needed. A start `driving` did not take over is undone."""
    check_address(address)
    path = sqlite_path(store_uri)
    if SPECULATIVE:  # Ray began while the file was validated: it serves this driver
        started = SPECULATIVE.pop()
        started.use(resources, log)
    elif path is not None and not path.exists():
        started = Starting(address, resources, log)
    else:
        started = None
    try:
        yield started
    finally:
        if started is not None:
            started.abandon()  # a driver stopped before running anything (refused lease, bad store)


SPECULATIVE: list[Starting] = []  # a start `speculate` began, until `starting` takes it
SPECULATE_GRACE_S = 0.5  # most bad files are refused within this (unknown keys, missing folders): no Ray for them


def speculate(address: str | None) -> Starting | None:
    """Begin a local Ray (no cluster named) while the caller validates its file: seconds of imports and
    checks that Ray's own seconds of start-up then overlap. The driver's `starting` takes it over; the
    caller undoes it in any case (`Starting.abandon`: a no-op once taken), after a refused file's one
    line is printed, so a bad file still exits 2 and leaves no Ray process behind."""
    if address not in (None, "local") or os.environ.get("RAY_ADDRESS") or os.environ.get("POLYPRUNE_SPECULATE") == "0":
        return None
    started = Starting(address, None, grace_s=SPECULATE_GRACE_S)
    SPECULATIVE[:] = [started]
    return started


@contextmanager
def driving(address: str | None, needed: bool = True, started: Starting | None = None) -> Iterator[None]:
    """A driver's run: Ray joined or started (when `needed`; a Ray this call started is shut
    down after) and SIGTERM taken as Ctrl-C meanwhile: `ray job stop` and batch schedulers send
    SIGTERM, and in-flight runs should then end KILLED, as on Ctrl-C. Either one, inside the
    scheduler's loop, stops it at its next turn (`interrupt`).
    `started`: Ray is being started already (`Starting`); wait for it instead."""
    if started is not None:
        owns_ray = started.wait()  # a failed start stays the caller's to `abandon`
        started.taken, needed = True, True
    else:
        owns_ray = needed and connect(address)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if needed:
            from ..lease import claim_ray

            claim_ray()  # the cluster layer of this driver's lease (orchestrator.lease); refused: Ray is shut below
        if started is not None:
            started.show()
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if owns_ray:
            import ray

            ray.shutdown()
        if started is not None:
            started.end()


def interrupt(signum, frame):
    """Inside the scheduler's loop: stop at its next turn (within a second); elsewhere, or a
    second time: at once."""
    if LOOPING.is_set() and not STOP.is_set():
        STOP.set()
        return
    raise KeyboardInterrupt


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
    probe it before creating anything (`starting`). (None, "auto": a local Ray, or Ray's to find.)"""
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
