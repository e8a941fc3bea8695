"""What a command prints on stderr: polyprune's own lines and progress, and a library's messages only
when they ask something of the user (its warnings and errors). `--verbose` (level INFO) or
POLYPRUNE_LOG_LEVEL=INFO|DEBUG shows every library's lines as the library prints them (docs/cli.md).

`settled` wraps a command, before it imports Ray or MLflow, and leaves the level it settled in
POLYPRUNE_LOG_LEVEL for what starts later: Ray's own level (`engine.session.connect` reads it), the
UI's server (`server_env`, `server_lines`), Ray's worker processes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from tasks.errors import UserError

ENV = "POLYPRUNE_LOG_LEVEL"
MLFLOW_ENV = "MLFLOW_LOGGING_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING")
QUIET = "WARNING"

# Informational notices that say nothing a user must act on, where each comes from.
# Ray 2.60 turns token authentication on for a local cluster it starts (a token in ~/.ray/auth_token)
# and says so at every start, telling how to opt out; the cluster is private to this driver, so the
# default it announces is the right one. (RAY_AUTH_MODE=token would silence it too, but `ray.init()`
# without an address may join a `ray start` cluster whose mode is not ours to decide.)
RAY_NOTICES = {"ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",)}
# `mlflow server` prints this with click, not logging: only a filter on its output removes it.
SERVER_NOTICES = ("[MLflow] Security middleware enabled with default settings",)
# Starlette deprecates a module MLflow 3.17's server imports: a note for MLflow's developers.
SERVER_WARNINGS = ("ignore:starlette.middleware.wsgi is deprecated",)


def level(verbose: bool = False) -> str:
    """The level asked for: --verbose is INFO unless POLYPRUNE_LOG_LEVEL asks for DEBUG."""
    asked = os.environ.get(ENV, "").strip().upper()
    if asked and asked not in LEVELS:
        raise UserError(ENV, f"allowed: {', '.join(LEVELS)}; got {os.environ[ENV]!r}")
    if verbose:
        return "DEBUG" if asked == "DEBUG" else "INFO"
    return asked or QUIET


@contextmanager
def settled(verbose: bool = False) -> Iterator[str]:
    """The level for this command and what it starts, restored after (a test calls `main` many times)."""
    lvl = level(verbose)
    saved = {k: os.environ.get(k) for k in (ENV, MLFLOW_ENV)}
    os.environ[ENV] = lvl
    os.environ.setdefault(MLFLOW_ENV, lvl)  # a user's own setting wins
    mlflow = logging.getLogger("mlflow")
    before = mlflow.level
    if "mlflow" in sys.modules:  # MLflow reads MLFLOW_LOGGING_LEVEL once, when imported
        mlflow.setLevel(os.environ[MLFLOW_ENV].upper())
    for name, starts in RAY_NOTICES.items():
        logger = logging.getLogger(name)
        # A filter on the logger itself: Ray's logging set-up at import resets a child logger's
        # level and handlers, not its filters.
        if not any(isinstance(f, Drop) for f in logger.filters):
            logger.addFilter(Drop(starts))
    try:
        yield lvl
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "mlflow" in sys.modules:
            mlflow.setLevel(before)


def quiet() -> bool:
    return os.environ.get(ENV, QUIET).upper() == QUIET


class Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not (quiet() and str(record.msg).startswith(self.starts))


def server_env(env: dict | None = None) -> dict:
    """The environment of a server child (`mlflow server`): its Python warnings of no use to a user off."""
    env = dict(os.environ if env is None else env)
    if quiet():
        env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS", ""), *SERVER_WARNINGS]))
    return env


def server_lines(stream, out) -> threading.Thread:
    """Copy a server child's output (`stream`, text) to `out` line by line, less its notices when quiet,
    until the child closes it; the thread doing it."""

    def pump():
        drop = SERVER_NOTICES if quiet() else ()
        for line in stream:
            if not (drop and line.startswith(drop)):
                out.write(line)
                out.flush()

    thread = threading.Thread(target=pump, name="polyprune-server-output", daemon=True)
    thread.start()
    return thread
