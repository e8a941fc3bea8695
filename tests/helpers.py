"""What the sweep, search and report tests share: a run folder with the tiny model and
text linked in, sweep / search files written into it, and reading the record back
(MLflow child runs, counts straight from a sqlite store)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# A one-cell sweep and a two-trial search of the tiny model on ./text (a run folder's links).
TINY_SWEEP = {
    "models": ["./tiny"],
    "methods": ["wanda"],
    "sparsities": [0.5],
    "calibration": {"languages": ["en"], "data": "./text", "nsamples": 2, "seqlen": 16},
    "evaluation": {"ppl": {"languages": ["en"], "nsamples": 2}},
    "resources": {"cpu_workers": 1},
}
TINY_SEARCH = {
    "model": "./tiny",
    "method": "mwanda",
    "sparsity": 0.5,
    "calibration": {"languages": ["en", "sw"], "data": "./text", "nsamples": 2, "seqlen": 16},
    "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 2}},
    "space": "mwanda_mix",
    "objectives": [{"metric": "ppl.sw"}],
    "n_trials": 2,
    "parallel": 1,
    "baselines": False,
    "confirm": False,  # the confirmation stage has its own tests (test_confirm.py)
}


def link_inputs(folder: Path, model, text) -> Path:
    """./tiny and ./text in `folder`, so the files written there use relative paths."""
    (folder / "tiny").symlink_to(model)
    (folder / "text").symlink_to(text)
    return folder


def write_yaml(path: Path, cfg: dict, **over) -> Path:
    path.write_text(yaml.safe_dump({**cfg, **over}, sort_keys=False))
    return path


def child_runs(db: Path, name: str, tag: str = "polyprune.cell_id") -> list:
    """MLflow runs of experiment `name` in the sqlite store `db` that carry `tag`."""
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{db}")
    exp = cl.get_experiment_by_name(name)
    return [r for r in cl.search_runs([exp.experiment_id], max_results=1000) if tag in r.data.tags]


def sqlite_rows(db: Path, sql: str, params: tuple = ()) -> list:
    """Rows of a read-only query; [] while the store does not exist yet or its schema is
    being created. sqlite directly: no MLflow / Optuna import in a polling loop."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def kill_9_when(proc, ready, timeout_s: float = 180, poll_s: float = 0.2) -> None:
    """SIGKILL a driver's whole process group once `ready()` holds (the driver must still be
    running then: a driver that ended first fails the test with its output)."""
    import os
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(poll_s)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server --serve-artifacts` on 127.0.0.1 over `backend`, on one port for its life:
    `start` (waits until it answers), `stop` (the process group, killed if it lingers); restartable."""

    def __init__(self, backend: str, artifacts: Path):
        self.backend, self.artifacts, self.port = backend, artifacts, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        import time
        import urllib.request

        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                                 "--backend-store-uri", self.backend, "--serve-artifacts",
                                 "--artifacts-destination", str(self.artifacts), "--workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner: lighter
        self.procs.append(proc)
        deadline = time.monotonic() + 300  # a loaded machine starts it slowly
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=10).close()
                return
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path):
    """A started `MlflowServer`; yields its URL, always stopped."""
    server = MlflowServer(backend, artifacts)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def spawn(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`args` as a subprocess of the checkout in its own session (killable as a group), output captured."""
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`polyprune ARGS` as a `spawn`ed subprocess."""
    return spawn([sys.executable, "-m", "orchestrator.cli", *args], env)


def one_line_refusal(err: str, kind: str, name: str) -> None:
    """A driver refused by the lease said one line naming this host's holder and since when."""
    import socket

    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{kind} {name!r} is being run by {socket.gethostname()}:" in err and " since " in err, err


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); a process past `timeout` is killed with its group and the test fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        import pytest

        pytest.fail(f"timed out: {err[-2000:]}")
    return proc.returncode, out, err


# ---------------------------------------------------------------- a user's first screen

# A library's line: a logging time stamp (Ray: 2026-12-03 06:22:04,654; MLflow, uvicorn: 2026/12/03 06:22:08),
# a Python warning (file.py:23: SomeWarning:), a server's notice, a worker's forwarded line, a traceback.
FOREIGN = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d|\.py:\d+: \w*Warning\b|^\[MLflow\]|^\(\w+ pid=|^Traceback"
                     r"|^(INFO|WARNING|DEBUG)\b|Registry store URI")
RAY_NOTICE = "Token authentication is enabled"


def user_env(home: Path, **extra) -> dict:
    """The environment of a user's shell on a machine of their own: none of the test session's settings
    for Ray or logging, a home (Ray keeps its token in ~/.ray) and a Ray temp folder (where `ray.init()`
    finds a `ray start` cluster to join) of its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "POLYPRUNE_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL", "PYTHONWARNINGS")}
    home = home.resolve()
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(home / "ray"), "PYTHONPATH": str(ROOT), **extra}


@contextlib.contextmanager
def short_home(prefix: str = "home-"):
    """A user's home for `user_env`, removed after: short, as Ray's socket paths in its temp folder
    (HOME/ray) must fit in 107 bytes."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (home / "ray").mkdir()
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def polyprune(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def foreign(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if FOREIGN.search(line)]
