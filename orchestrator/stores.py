"""The stores a driver writes to, probed before anything is created or started.

`creating(path)` serialises the creation of a sqlite store's schema (MLflow's and Optuna's
both fail when two processes create it at once); `check_uri` / `check_database` /
`check_durable` probe a store (a known scheme, a server that answers, its driver installed,
a place that outlives a Ray job), so a bad one is one line and exit 2, in seconds.
`Outage` rides out a database server's brief outage once a driver runs (a call that fails on a
lost connection is retried for POLYPRUNE_STORE_RETRY_S, then the driver stops in one line);
`riding` gives an MlflowClient on a database that rides them out (docs/resume-and-faults.md).
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks.errors import UserError


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


def scheme_of(uri: str) -> str:
    """A store URI's scheme, less its driver (`postgresql+psycopg` -> `postgresql`); a bare path is `file`."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"


def shown(uri: str) -> str:
    """A store URI as it may be printed: its password (postgresql://USER:PASSWORD@..., http(s) too) as ***."""
    return re.sub(r"(://[^/:@]*:)[^/]*@", r"\1***@", uri)


def check_uri(uri: str) -> None:
    """Before anything is created or started: a scheme MLflow can use, and a server that answers."""
    retry_limit()  # a bad POLYPRUNE_STORE_RETRY_S is one line now, not when a store first fails
    scheme = scheme_of(uri)
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


# ---------------------------------------------------------------- riding out a store's outage

RETRY_ENV = "POLYPRUNE_STORE_RETRY_S"
DEFAULT_RETRY_S = 120.0  # like MLflow's HTTP retries (7 with backoff): a database failover or restart


def retry_limit() -> float:
    """How long a store call is retried while its database server is away (POLYPRUNE_STORE_RETRY_S)."""
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_S
    try:
        limit = float(raw)
    except ValueError:
        limit = -1.0
    if not 0 <= limit < float("inf"):
        raise UserError(RETRY_ENV, f"seconds a store call is retried while its server is away: a number >= 0; got {raw!r}")
    return limit


class StoreDown(UserError):
    """A store that stayed away past the retry limit: the driver stops as on Ctrl-C and says so in one line."""


def lost_connection(e: BaseException) -> bool:
    """Did `e` come from a store's server that could not be reached or dropped the connection (stopped,
    restarting, failing over), rather than from the call itself? Anywhere in the chain: SQLAlchemy's
    OperationalError / InterfaceError or a connection it invalidated (Optuna wraps them in
    StorageInternalError, MLflow's database store in MlflowException), or the HTTP client's connection
    error, timeout or exhausted retries (MLflow's client, once its own retries are spent)."""
    import requests
    from sqlalchemy import exc

    lost = (exc.OperationalError, exc.InterfaceError, requests.exceptions.ConnectionError,
            requests.exceptions.RetryError, requests.exceptions.Timeout)
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, lost) or getattr(e, "connection_invalidated", False):
            return True
        e = e.__cause__ or e.__context__  # MLflow's HTTP client re-raises without `from`
    return False


def reason(e: BaseException) -> str:
    """The first line of the innermost error under `e` that says something (connection refused, ...)."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    said = [str(x).strip() for x in chain if str(x).strip() not in ("", "()")] or [type(chain[0]).__name__]
    return said[-1].splitlines()[0][:200]


class Outage:
    """One store's calls, retried while its server is away: backoff from 0.5 s to 4 s for up to `limit_s`
    from the first failed attempt, one line when it goes and when it is back. Past the limit the store counts as
    down for this process: that call and every later one raise `StoreDown` at once (the clean-up that
    follows must not wait the limit out again). `call(..., landed=f)`: before retrying a call that writes,
    `f()` says whether the failed attempt reached the store after all, (True, its result) or (False, None),
    so a write is never made twice."""

    def __init__(self, field: str, uri: str, limit_s: float | None = None):
        self.field, self.uri = field, shown(uri)
        self.limit_s = retry_limit() if limit_s is None else limit_s
        self.down: str | None = None

    def call(self, fn, *args, landed=None, **kw):
        if self.down is not None:
            raise StoreDown(self.field, self.down)
        since, pause = None, 0.5
        while True:
            # An outage counts from the start of its first failed attempt: an HTTP call fails only once
            # MLflow's own retries (about two minutes) are spent.
            began = time.monotonic()
            try:
                if since is not None and landed is not None:
                    done, result = landed()
                    if done:
                        return self.back(since, result)
                return self.back(since, fn(*args, **kw))
            except Exception as e:
                if not lost_connection(e):
                    raise
                why = reason(e)
                now = time.monotonic()
                if since is None:
                    since = began
                    say(f"{self.uri} does not answer ({why}); retrying for up to {self.limit_s:g} s")
                if now - since >= self.limit_s:
                    self.down = (f"{self.uri} did not answer for {now - since:.0f} s (retry limit {self.limit_s:g} s, "
                                 f"{RETRY_ENV}; last: {why}); stopped, run it again to resume")
                    raise StoreDown(self.field, self.down) from None
                time.sleep(min(pause, since + self.limit_s - now))
                pause = min(2 * pause, 4.0)

    def back(self, since: float | None, result):
        if since is not None:
            say(f"{self.uri} answers again after {time.monotonic() - since:.0f} s")
        return result


def say(msg: str) -> None:
    """A driver's progress line on stderr (stores.py sits below the drivers' own `log`)."""
    print(msg, file=sys.stderr, flush=True)


class RidingClient:
    """An MlflowClient whose calls ride out its store's outages (`Outage`). A tracking URI that names a
    database: MLflow has no retries of its own there. An `mlflow server`: its HTTP client retries for about
    two minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES), which counts towards the limit; once the limit is past,
    the driver stops in one line rather than fail each clean-up call after another two minutes."""

    def __init__(self, client, uri: str):
        import logging

        self.client, self.outage = client, Outage("tracking_uri", uri)
        # MLflow logs each failed attempt with a traceback; the outage's own lines say it once
        db_log = logging.getLogger("mlflow.store.db.utils")
        if retried not in db_log.filters:
            db_log.addFilter(retried)

    def __getattr__(self, name):
        got = getattr(self.client, name)
        if not callable(got):
            return got
        return lambda *args, **kw: self.outage.call(got, *args, **kw)


def retried(record) -> bool:
    """A logging filter: False for a record of a lost connection (`Outage` retries it and says so)."""
    return not (record.exc_info and record.exc_info[1] is not None and lost_connection(record.exc_info[1]))


def riding(client, uri: str):
    """`client`, riding out outages when `uri` names a server, a database or an `mlflow server` (`RidingClient`)."""
    return RidingClient(client, uri) if scheme_of(uri) in (*DB_PORTS, "http", "https") else client
