"""One driver per sweep and per study: a lease only one process can hold.

Two layers, both taken by `hold(kind, name, cl, exp_id, uri)` and its `Lease`:
- the store: a registered model `polyprune-lock.<kind>.<name>.<exp>.<generation>` in the
  MLflow store's model registry, its tags the holder's claim {holder host:pid, token,
  since, beat}. The store itself makes the claim atomic: creating a registered model whose
  name exists fails (a unique key in sqlite, PostgreSQL and MySQL, behind a tracking server
  or not), so of two drivers that claim the same generation exactly one succeeds, with no
  settle time. A holder whose process is gone (same host) or whose beat is older than
  `expiry_s` (another host, a lost node) is taken over by creating the next generation: the
  same unique create, so one taker wins. The highest generation is the lease; a claim that
  finds a higher one than its own after creating it lost to a driver that read later, and
  withdraws. Releasing marks the generation released (it stays, so generations only grow);
  older ones are deleted. A heartbeat thread renews `beat` only while its generation is
  still the highest and its own: a driver that finds its lease taken calls `on_lost`
  (the lifecycle stops as on Ctrl-C) and ends with one line naming the new holder. A
  local folder store (`file:`) has no unique create, so there the check-and-create runs
  under a lock on its folder (one host); a Databricks store is refused.
- the cluster: once Ray is connected (`RaySession.driving` calls `Lease.claim_ray`), a named
  actor `polyprune/<kind>:<name>`. Ray registers a name atomically and ends a
  non-detached actor with the job that owns it, so a driver killed with -9 frees it.

A refused driver gets one `UserError` naming the holder (host, pid, since when).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from tasks.errors import UserError

from .names import LEASE_PREFIX
from .stores import creating, scheme_of

DEFAULTS = {
    "beat_s": 5.0,  # heartbeat period (the study's shown heartbeat uses it too)
    "expiry_s": 60.0,  # a holder on another host silent this long is taken as dead (> a server restart)
    "ray_wait_s": 60.0,  # how long an actor that does not answer may linger before Ray ends it
}
# A test hook: seconds between reading the lease and claiming it, to make two drivers race on purpose.
CLAIM_DELAY = "POLYPRUNE_LEASE_CLAIM_DELAY_S"
NAMESPACE = "polyprune"


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
    since = datetime.fromtimestamp(float(claim.get("since", 0)), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    beat = time.time() - float(claim.get("beat", 0))
    return (f"{kind} {name!r} is being run by {claim.get('holder', '?')} since {since} "
            f"(last heartbeat {beat:.0f}s ago); wait for it or stop it")


class Lease:
    def __init__(self, kind: str, name: str, cl, exp_id: str, uri: str = "", on_lost=None):
        self.kind, self.name, self.cl, self.exp_id = kind, name, cl, exp_id
        scheme = scheme_of(uri)
        if scheme == "databricks":
            raise UserError("tracking_uri", f"{uri!r}: polyprune's lease needs a create the store makes atomic, not verified "
                                            f"on Databricks; use an mlflow server, PostgreSQL, MySQL or sqlite store")
        # A folder store checks then creates: only a lock on its folder (this host) makes that atomic.
        self.folder = Path(uri.split("://", 1)[-1]) if uri and scheme == "file" else None
        self.on_lost = on_lost
        self.lost: str | None = None
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:80]
        self.base = f"{LEASE_PREFIX}{kind}.{slug}.{exp_id}."  # clearly polyprune's, not a model
        now = time.time()
        self.claim = {"holder": me(), "token": uuid.uuid4().hex, "since": now, "beat": now}
        self.gen: int | None = None
        self.actor = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def generations(self) -> dict[int, dict]:
        """Every generation of this lease in the store: {generation: claim}."""
        found = self.cl.search_registered_models(filter_string=f"name LIKE '{self.base}%'", max_results=1000)
        out = {}
        for m in found:
            tail = m.name[len(self.base):]
            if m.name.startswith(self.base) and tail.isdigit():
                out[int(tail)] = dict(m.tags)
        return out

    def read(self) -> tuple[int | None, dict]:
        """The lease: its highest generation and that generation's claim."""
        gens = self.generations()
        top = max(gens, default=None)
        return top, (gens[top] if top is not None else {})

    def free(self, claim: dict) -> bool:
        if not claim or claim.get("released") or claim.get("token") == self.claim["token"]:
            return True
        host = claim.get("holder", "").rpartition(":")[0]
        if host == socket.gethostname():
            return not holder_alive(claim.get("holder"))
        return time.time() - float(claim.get("beat", 0)) > DEFAULTS["expiry_s"]

    def create(self, gen: int) -> bool:
        """Claim generation `gen`: True when this driver created it, False when it exists."""
        from mlflow.exceptions import MlflowException

        tags = {k: str(v) for k, v in self.claim.items()}
        note = f"polyprune's lock on {self.kind} {self.name!r} (not a model): one driver at a time; safe to ignore"
        with creating(self.folder / "x" if self.folder else None):
            try:
                if self.folder is not None and gen in self.generations():
                    return False
                self.cl.create_registered_model(self.base + str(gen), tags=tags, description=note)
                return True
            except MlflowException as e:
                if e.error_code == "RESOURCE_ALREADY_EXISTS":
                    return False
                raise

    def acquire(self) -> "Lease":
        top, current = self.read()
        if not self.free(current):
            raise UserError("FILE", describe(self.kind, self.name, current))
        time.sleep(float(os.environ.get(CLAIM_DELAY, "0") or 0))
        gen = 0 if top is None else top + 1
        if not self.create(gen):  # another driver claimed this generation first
            raise UserError("FILE", describe(self.kind, self.name, self.read()[1]))
        self.gen = gen
        gens = self.generations()
        if max(gens) != gen:  # a driver that read the lease after us claimed a later generation
            self.withdraw()
            raise UserError("FILE", describe(self.kind, self.name, gens[max(gens)]))
        for old in [g for g in gens if g < gen]:
            try:
                self.cl.delete_registered_model(self.base + str(old))
            except Exception:  # another taker deleted it first
                pass
        self.thread = threading.Thread(target=self.beat, name="polyprune-lease", daemon=True)
        self.thread.start()
        return self

    def still_mine(self) -> bool:
        top, current = self.read()
        if top == self.gen and current.get("token") == self.claim["token"]:
            return True
        self.lost = (f"the lease was taken over: {describe(self.kind, self.name, current)}" if current
                     else f"{self.kind} {self.name!r}: the lease was removed from the store")
        return False

    def beat(self) -> None:
        while not self.stop.wait(DEFAULTS["beat_s"]):
            try:
                if not self.still_mine():
                    if self.on_lost is not None:
                        self.on_lost(self.lost)
                    return
                self.claim["beat"] = time.time()
                self.cl.set_registered_model_tag(self.base + str(self.gen), "beat", str(self.claim["beat"]))
            except Exception:  # the store may be restarting: MLflow retries, the next beat comes
                pass

    def withdraw(self) -> None:
        try:
            self.cl.delete_registered_model(self.base + str(self.gen))
        except Exception:
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
        if self.actor is not None:
            import ray

            # After ray.shutdown the actor is gone with its job, and any Ray call would start a new local Ray.
            if ray.is_initialized():
                try:
                    ray.kill(self.actor)
                except Exception:
                    pass
        try:
            if self.gen is not None and self.lost is None and self.still_mine():
                # Marked, not deleted: generations only grow, so a driver that read the lease long ago
                # can never re-create a generation below the current one and think it won.
                self.cl.set_registered_model_tag(self.base + str(self.gen), "released", "1")
        except Exception:  # a store that is down: the lease expires by itself
            pass


@contextmanager
def hold(kind: str, name: str, cl, exp_id: str, uri: str = "", on_lost=None) -> Iterator[Lease]:
    """Hold the lease of sweep / search `name` (experiment `exp_id` of the store at `uri`) for the
    block; `on_lost(why)` is called from the heartbeat if another driver takes it over."""
    lease = Lease(kind, name, cl, exp_id, uri, on_lost).acquire()
    try:
        yield lease
    finally:
        lease.release()

