"""THE driver's lifecycle, shared by sweeps and searches: `drive(job)`.

The caller has validated everything (nothing is created on a bad file) and passes the
command's `session.RaySession` (or an address: drive then opens and closes its own). Then:
start (`RaySession.check`: the Ray address probed; `prepare`: on a new sqlite store Ray and
the workers start in the background while MLflow creates its schema) -> the MLflow client
and experiment, opened once -> the lease (`orchestrator.lease`: one driver per sweep or
study, else exit 2) -> `job.open` (what is done already; a search takes its study over)
-> Ray joined, SIGTERM taken as Ctrl-C (`RaySession.driving`) -> the parent run (reused on
resume; children a dead driver left RUNNING end KILLED) -> each of `job.stages(...)`
through `scheduler.run_cells` -> `job.end` and the parent's final status.

One interrupt path for every kind and stage:
- Ctrl-C / SIGTERM: `job.stop("KILLED", why)` ends the records in flight, status KILLED, exit 130;
- the driver itself fails: `job.stop("FAILED", why)`, status FAILED, the error re-raised;
- a store stays away past its retry limit (`stores.StoreDown`): as Ctrl-C, then its one line, exit 2;
- some cells failed (`job.has_failures()`): status FAILED, exit 1; else FINISHED, exit 0.

A kind is a `Job`: a source of cells and a sink of events per stage, plus small hooks.
A stage is one `run_cells` pass under the same lease, parent run and worker actors. To add one, yield
another `(source, events)` from `Job.stages`: the generator resumes only once the
previous stage has run through, and not at all after an interrupt, so a later stage
(e.g. re-running a search's best trials) can read what the earlier ones produced. The actors
are started for the first stage and serve every later one (a model they hold stays loaded).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

from tasks.errors import UserError

from .. import tracking
from ..lease import hold
from ..provenance import provenance
from ..stores import StoreDown
from .record import log
from .scheduler import Events, Source, WorkerPool, run_cells
from .session import RaySession


@dataclass
class Record:
    """Where a job records: the MLflow client and experiment, the parent run (None until
    `stages` is reached), the provenance tags every run of this driver carries, and when
    the driver started (time.time())."""

    cl: Any
    exp: str
    tags: dict[str, str]
    t0: float
    parent: str | None = None
    lease: Any = None  # the held lease (its `lost` says whether another driver took it over)


class Job:
    """A kind of driven run (sweep, search). Subclasses set `kind` ("sweep" or "search": the
    lease's kind and the parent run's role), `name` (experiment, lease and parent run),
    `tracking_uri` and `resources` (the first stage's workers, started during start-up),
    and override the hooks they need."""

    kind: str
    name: str
    tracking_uri: str
    resources: Any

    def open(self, rec: Record) -> bool:
        """Under the lease, before Ray and the parent run: read what is done. True when some
        stage has cells to run (else Ray is not started at all)."""
        return True

    def parent(self) -> tuple[dict[str, str], dict[str, Any], dict[str, bytes]]:
        """The parent run's own (tags, params, artifacts)."""
        return {}, {}, {}

    def stages(self, rec: Record) -> Iterator[tuple[Source, Events]]:
        """The (source, events) of each `run_cells` pass, in order; `rec.parent` is set. Code
        before the first yield runs once the parent exists (create the recorder there). Yield
        only a stage that has cells: a stage's workers are started for it."""
        return iter(())

    def stop(self, status: str, why: str) -> None:
        """Interrupted or failed: end every record still in flight with `status` (nothing stays RUNNING)."""

    def has_failures(self) -> bool:
        """Did cells fail (the run then ends FAILED, exit 1)?"""
        return False

    def end(self, status: str) -> None:
        """The final record on the parent (metrics, artifacts), before it is ended with `status`."""

    def release(self) -> None:
        """Always once the lease is held (even when `open` failed), before it is released."""


@dataclass
class Outcome:
    status: str  # the parent run's: FINISHED, FAILED or KILLED
    code: int  # the exit code: 0, 1 (cells failed) or 130 (interrupted)


def drive(job: Job, ray: RaySession | str | None = None) -> Outcome:
    """Run `job` from start-up to its parent run's final status (see the module's docstring) on
    `ray`: the command's RaySession, or a Ray address (None: RAY_ADDRESS or a local Ray) for a
    session of this call's own. A driver error is re-raised after the records are ended."""
    t0 = time.time()
    uri = job.tracking_uri
    tracking.client(uri, create=False)  # a missing sqlite folder is a UserError before anything exists
    with nullcontext(ray) if isinstance(ray, RaySession) else RaySession(ray) as session:
        session.check()
        path = tracking.sqlite_path(uri)
        session.prepare(job.resources, log, new_store=path is not None and not path.exists())
        cl = tracking.client(uri, create=True)
        exp = tracking.experiment_id(cl, job.name, uri, create=True)  # creates the schema here, once
        # the heartbeat found this driver's lease taken: stop like Ctrl-C (the loop's next turn)
        with hold(job.kind, job.name, cl, exp, uri, on_lost=lambda why: session.interrupt.stop.set()) as lease:
            rec = Record(cl, exp, provenance(), t0, lease=lease)
            try:
                needed = job.open(rec)
                with session.driving(needed, lease):
                    outcome = run_parent(job, rec, session)
            finally:
                job.release()
            if lease.lost:  # stopped as on Ctrl-C, then told as a refusal: one line, exit 2
                raise UserError("FILE", lease.lost)
            return outcome


def run_parent(job: Job, rec: Record, session: RaySession) -> Outcome:
    tags, params, files = job.parent()
    rec.parent = tracking.begin_parent(rec.cl, rec.exp, job.name, job.kind, {**rec.tags, **tags}, params)
    tracking.log_artifacts(rec.cl, rec.parent, files)
    status, code = "FINISHED", 0
    pool = session.take_pool()  # actors started during start-up serve the first stage
    try:
        try:
            for source, events in job.stages(rec):
                if rec.lease is not None and rec.lease.lost:  # lost between stages: no stage starts
                    raise KeyboardInterrupt
                pool = pool or WorkerPool(job.resources, log)  # one pool for every stage: actors start once
                run_cells(source, job.resources, events, log, pool=pool, interrupt=session.interrupt)
        finally:  # the actors go before the records in flight are ended
            if pool is not None:
                pool.shutdown()
    except KeyboardInterrupt:
        status, code = "KILLED", 130
        job.stop("KILLED", "interrupted (Ctrl-C / SIGTERM)")
    except StoreDown as e:  # a store away past its retry limit: stopped as on Ctrl-C, then told in one line
        status = "KILLED"
        job.stop("KILLED", f"{e}")
        raise
    except BaseException as e:
        status = "FAILED"
        job.stop("FAILED", f"the driver failed: {type(e).__name__}: {e}")
        raise
    finally:
        if status == "FINISHED" and job.has_failures():
            status, code = "FAILED", 1
        taken = rec.lease is not None and rec.lease.lost
        try:
            job.end(status)
        finally:
            if not taken:  # a driver that lost its lease leaves the parent run to the new holder
                rec.cl.set_terminated(rec.parent, status)
    return Outcome(status, code)
