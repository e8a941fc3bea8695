"""The stores a driver writes to, probed before anything is created or started.

`creating(path)` serialises the creation of a sqlite store's schema (MLflow's and Optuna's
both fail when two processes create it at once); `check_uri` / `check_database` /
`check_durable` probe a store (a known scheme, a server that answers, its driver installed,
a place that outlives a Ray job), so a bad one is one line and exit 2, in seconds.
"""

from __future__ import annotations

import fcntl
import os
import socket
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


def check_uri(uri: str) -> None:
    """Before anything is created or started: a scheme MLflow can use, and a server that answers."""
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
