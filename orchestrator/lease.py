"""One driver per sweep and per study: a lease only one process can hold.

Two layers, both taken by `hold(kind, name, cl, exp_id)` and its `Lease`:
- the store: an experiment tag `polyprune.lease` = {holder host:pid, token, since, beat}
  on the sweep's / search's MLflow experiment (one per name, created create-or-get).
  MLflow has no compare-and-set: next to a sqlite store, check-and-claim runs under a
  lock on the store's folder; elsewhere a claim is written, left to settle for
  `settle_s`, and read back: of two drivers that claim at once, both read the last
  write, and only its writer goes on. A heartbeat thread renews `beat`; a holder
  whose process is gone (same host) or whose beat is older than `expiry_s` (another
  host, a lost node) is taken over without manual cleanup. This is the layer that
  spans machines and Ray clusters.
- the cluster: once Ray is connected (`sweep.session.driving` calls `claim_ray`), a named
  actor `polyprune/<kind>:<name>`. Ray registers a name atomically and ends a
  non-detached actor with the job that owns it, so a driver killed with -9 frees it.

A refused driver gets one `UserError` naming the holder (host, pid, since when).
`creating(path)` serialises the creation of a sqlite store's schema (MLflow's and
Optuna's both fail when two processes create it at once); `check_uri` / `check_database` /
`check_durable` probe a store before anything is created (a known scheme, a server that
answers, its driver installed, a place that outlives a Ray job).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tasks.errors import UserError

from .names import LEASE

DEFAULTS = {
    "settle_s": 1.0,  # claim -> read back; far above one write's latency
    "beat_s": 5.0,  # heartbeat period
    "expiry_s": 60.0,  # a holder on another host silent this long is taken as dead (> a server restart)
    "ray_wait_s": 60.0,  # how long an actor that does not answer may linger before Ray ends it
}
TAG = LEASE
NAMESPACE = "polyprune"
HELD: list["Lease"] = []  # leases this process holds, for `claim_ray` once Ray is up


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_alive(holder: str | None) -> bool:
    """Is `host:pid` a live process of this host, other than this one? A holder on
    another machine cannot be checked from here: False (judged by its heartbeat)."""
    host, _, pid = (holder or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lingering(claim: dict) -> bool:
    """An actor that still answers for a driver of this host that is gone (Ray ends it shortly)."""
    host, _, pid = claim.get("holder", "").rpartition(":")
    return host == socket.gethostname() and pid != str(os.getpid()) and not holder_alive(claim.get("holder"))


def describe(kind: str, name: str, claim: dict) -> str:
    since = datetime.fromtimestamp(claim.get("since", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    beat = time.time() - float(claim.get("beat", 0))
    return (f"{kind} {name!r} is being run by {claim.get('holder', '?')} since {since} "
            f"(last heartbeat {beat:.0f}s ago); wait for it or stop it")


class Lease:
    def __init__(self, kind: str, name: str, cl, exp_id: str, sqlite: Path | None = None):
        self.kind, self.name, self.cl, self.exp_id, self.sqlite = kind, name, cl, exp_id, sqlite
        now = time.time()
        self.claim = {"holder": me(), "token": uuid.uuid4().hex, "since": now, "beat": now}
        self.actor = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def read(self) -> dict:
        raw = self.cl.get_experiment(self.exp_id).tags.get(TAG) or ""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def write(self, claim: dict) -> None:
        self.cl.set_experiment_tag(self.exp_id, TAG, json.dumps(claim) if claim else "")

    def free(self, claim: dict) -> bool:
        if not claim or claim.get("token") == self.claim["token"]:
            return True
        host = claim.get("holder", "").rpartition(":")[0]
        if host == socket.gethostname():
            return not holder_alive(claim.get("holder"))
        return time.time() - float(claim.get("beat", 0)) > DEFAULTS["expiry_s"]

    def acquire(self) -> "Lease":
        # A sqlite store is on this host: its folder lock makes check-and-claim atomic.
        # Any other store: claim, settle, read back.
        with creating(self.sqlite):
            current = self.read()
            if not self.free(current):
                raise UserError("FILE", describe(self.kind, self.name, current))
            self.write(self.claim)
        if self.sqlite is None:
            time.sleep(DEFAULTS["settle_s"])
            current = self.read()
            if current.get("token") != self.claim["token"]:
                raise UserError("FILE", describe(self.kind, self.name, current))
        self.thread = threading.Thread(target=self.beat, name="polyprune-lease", daemon=True)
        self.thread.start()
        HELD.append(self)
        return self

    def beat(self) -> None:
        while not self.stop.wait(DEFAULTS["beat_s"]):
            try:
                self.claim["beat"] = time.time()
                self.write(self.claim)
            except Exception:  # the store may be restarting: MLflow retries, the next beat comes
                pass

    def claim_ray(self) -> None:
        """The cluster layer, once this process is connected to Ray."""
        import ray

        @ray.remote(num_cpus=0)
        class Holder:
            def __init__(self, claim: dict):
                self.claim = claim

            def who(self) -> dict:
                return self.claim

        name = f"{self.kind}:{self.name}"
        deadline = time.monotonic() + DEFAULTS["ray_wait_s"]
        while True:
            try:
                self.actor = Holder.options(name=name, namespace=NAMESPACE, lifetime=None).remote(self.claim)
                return
            except ValueError:  # the name is taken
                pass
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
                other = ray.get(actor.who.remote(), timeout=10)
            except Exception:  # gone between the two calls, or dying with its job
                other = None
            if other is not None and lingering(other):
                try:  # its driver is gone (same host, no such process): Ray would end it soon; do it now
                    ray.kill(actor)
                except Exception:
                    pass
            elif other is not None or time.monotonic() > deadline:
                raise UserError("FILE", describe(self.kind, self.name, other or {"holder": "a driver on this Ray cluster"}))
            time.sleep(0.2)

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        if self in HELD:
            HELD.remove(self)
        if self.actor is not None:
            import ray

            # After ray.shutdown the actor is gone with its job, and any Ray call would start a new local Ray.
            if ray.is_initialized():
                try:
                    ray.kill(self.actor)
                except Exception:
                    pass
        try:
            if self.read().get("token") == self.claim["token"]:
                self.write({})
        except Exception:  # a store that is down: the lease expires by itself
            pass


@contextmanager
def hold(kind: str, name: str, cl, exp_id: str, sqlite: Path | None = None) -> Iterator[Lease]:
    """Hold the lease of sweep / search `name` (experiment `exp_id`; `sqlite`: the store's file, if one) for the block."""
    lease = Lease(kind, name, cl, exp_id, sqlite).acquire()
    try:
        yield lease
    finally:
        lease.release()


def claim_ray() -> None:
    """Take the cluster layer of every lease this process holds (called once Ray is connected)."""
    for lease in HELD:
        if lease.actor is None:
            lease.claim_ray()


@contextmanager
def creating(path: Path | None) -> Iterator[None]:
    """Exclusive while a sqlite store at `path` is created or opened for the first time:
    a lock on its folder (flock; released when the process dies), so nothing is left behind."""
    if path is None or not path.parent.is_dir():
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


SCHEMES = ("sqlite", "http", "https", "file", "databricks", "postgresql", "mysql", "mssql")
PROBE_TIMEOUT_S = 5.0  # an unreachable server is one line in seconds, not after MLflow's ~250 s of retries


def check_uri(uri: str) -> None:
    """Before anything is created or started: a scheme MLflow can use, and a server that answers."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise UserError("tracking_uri", f"unknown scheme {scheme!r} in {uri!r}; use sqlite:///FILE, http(s)://HOST:PORT "
                                        f"(mlflow server), postgresql://... or a folder")
    if scheme in ("sqlite", "file"):
        check_durable(uri, "tracking_uri")
    if scheme in DB_PORTS:
        check_database(uri, "tracking_uri")
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # something answers: MLflow's own calls will say more
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise UserError("tracking_uri", f"no MLflow server answers at {uri} ({reason}); start it or fix the address") from None


DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # the servers' default ports, for the probe


def check_database(uri: str, field: str) -> None:
    """A database store (MLflow's or Optuna's): a SQLAlchemy URL, a server that accepts a TCP
    connection within the probe timeout (drivers and MLflow otherwise wait and retry for
    minutes), then its driver installed. Credentials are checked by the store's first open."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise UserError(field, f"cannot use {uri!r}: not a database URL SQLAlchemy knows "
                               f"(postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://...)") from None
    shown = url.render_as_string(hide_password=True)  # never echo a password
    port = url.port or DB_PORTS.get(url.get_backend_name())
    if url.host and port:  # no host: a local socket, opened by the driver
        try:
            socket.create_connection((url.host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(field, f"no database server answers at {url.host}:{port} for {shown} "
                                   f"({e.strerror or e}); start it or fix the address") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise UserError(field, f"{shown} needs the Python driver {e.name or url.get_driver_name()!r}, which is not "
                               f"installed; install it or name an installed one: {url.get_backend_name()}+DRIVER://...") from None


def check_durable(path: str, field: str) -> None:
    """A store must outlive the run: `ray job submit` runs the driver in a per-job copy of the
    working directory that Ray deletes, so a store there (a relative default) would be lost."""
    if f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}" in path:
        server = "tracking server (http://...)" if field == "tracking_uri" else "database (postgresql://...)"
        raise UserError(field, f"{path!r} lies inside Ray's per-job copy of the working directory, which is deleted "
                               f"with the job; give --{field.replace('_', '-')} with a {server} or an absolute path outside it")
