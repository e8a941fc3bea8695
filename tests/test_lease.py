"""The lease is atomic on every store: the race is made to happen, not hoped for.

A test hook (`POLYPRUNE_LEASE_CLAIM_DELAY_S`) holds every driver between reading the lease
and claiming it, far longer than any write takes, so two drivers started together both read
"free" and both claim. Against a real `mlflow server` on 127.0.0.1 (sqlite behind it, and
PostgreSQL where `POLYPRUNE_TEST_POSTGRES` names a database; skipped, never faked, without
one): exactly one driver runs, the other prints one line and exits 2, every cell and trial
is recorded once, nothing stays RUNNING. Also: a driver whose lease is taken over stops as
on Ctrl-C, and a holder killed with -9 is taken over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import TINY_SEARCH, TINY_SWEEP, cli, finish, mlflow_server, one_line_refusal, spawn, write_yaml
from orchestrator.lease import CLAIM_DELAY
from orchestrator.names import LEASE_PREFIX

SWEEP, SEARCH = TINY_SWEEP, TINY_SEARCH
DELAY = {CLAIM_DELAY: "2"}  # both drivers read "free", then wait 2 s before claiming


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts") as url:
        yield url


def runs_of(url: str, name: str) -> list:
    from mlflow import MlflowClient

    cl = MlflowClient(url)
    exp = cl.get_experiment_by_name(name)
    return cl.search_runs([exp.experiment_id], max_results=1000) if exp else []


HOLD = """
import sys, time
from orchestrator import tracking
from orchestrator.lease import hold
uri, name = sys.argv[1], sys.argv[2]
cl = tracking.client(uri, create=True)
exp = tracking.experiment_id(cl, name, uri, create=True)
with hold("sweep", name, cl, exp, uri):
    print("HELD", flush=True)
    time.sleep(4)
"""


def race_hold(uri: str, tries: int = 3) -> None:
    """`tries` pairs of processes claim one lease each, all at once, every claim delayed."""
    procs = {f"race{i}": [spawn([sys.executable, "-c", HOLD, uri, f"race{i}"], env=DELAY) for _ in range(2)] for i in range(tries)}
    for name, pair in procs.items():
        results = [(p.communicate(timeout=120), p.returncode) for p in pair]
        held = [(out, err) for (out, err), code in results if code == 0 and "HELD" in out]
        lost = [err for (out, err), code in results if code != 0]
        assert len(held) == 1 and len(lost) == 1, results
        assert f"sweep {name!r} is being run by {socket.gethostname()}:" in lost[0], lost[0]


def test_the_claim_is_atomic_through_a_server(server):
    race_hold(server)


@pytest.mark.skipif(not os.environ.get("POLYPRUNE_TEST_POSTGRES"), reason="no PostgreSQL (POLYPRUNE_TEST_POSTGRES unset)")
def test_the_claim_is_atomic_through_a_server_on_postgresql(tmp_path):
    import sqlalchemy

    url = os.environ["POLYPRUNE_TEST_POSTGRES"]
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    db = f"lease_{os.getpid()}_{int(time.time())}"
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    try:
        backend = sqlalchemy.engine.make_url(url).set(database=db).render_as_string(hide_password=False)
        with mlflow_server(backend, tmp_path / "artifacts") as server:
            race_hold(server)
    finally:
        with engine.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        engine.dispose()


def test_two_sweep_drivers_through_a_server_one_runs(ray_local, run_dir, server):
    path = write_yaml(run_dir / "s.yaml", SWEEP, name="ls", sparsities=[0.5, 0.6])
    pair = [cli("sweep", str(path), "--ray-address", ray_local, "--tracking-uri", server, env=DELAY) for _ in range(2)]
    (c1, _, e1), (c2, _, e2) = [finish(p) for p in pair]
    assert sorted([c1, c2]) == [0, 2], (e1[-2000:], e2[-2000:])
    one_line_refusal(e1 if c1 == 2 else e2, "sweep", "ls")
    runs = runs_of(server, "ls")
    cells = [r for r in runs if "polyprune.cell_id" in r.data.tags]
    ids = [r.data.tags["polyprune.cell_id"] for r in cells]
    assert len(ids) == 3 and len(set(ids)) == 3, ids  # the dense reference and two sparsities, each once
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]


def test_two_search_drivers_through_a_server_one_runs(ray_local, run_dir, server):
    path = write_yaml(run_dir / "q.yaml", SEARCH, name="lq", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    pair = [cli("search", str(path), "--ray-address", ray_local, "--tracking-uri", server, env=DELAY) for _ in range(2)]
    (c1, _, e1), (c2, _, e2) = [finish(p) for p in pair]
    assert sorted([c1, c2]) == [0, 2], (e1[-2000:], e2[-2000:])
    one_line_refusal(e1 if c1 == 2 else e2, "search", "lq")
    runs = runs_of(server, "lq")
    trials = [r for r in runs if "polyprune.trial" in r.data.tags]
    assert sorted(r.data.tags["polyprune.trial"] for r in trials) == ["0", "1"]  # 2 trials, once each
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]


def lock_of(url: str, name: str):
    """The lease's current generation in the store: (registered-model name, its tags)."""
    from mlflow import MlflowClient

    cl = MlflowClient(url)
    found = cl.search_registered_models(filter_string=f"name LIKE '{LEASE_PREFIX}sweep.{name}.%'")
    return (max(found, key=lambda m: int(m.name.rsplit(".", 1)[1])) if found else None), cl


def wait_for_lock(url: str, name: str, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock, cl = lock_of(url, name)
        running = any(r.info.status == "RUNNING" and "polyprune.cell_id" in r.data.tags for r in runs_of(url, name))
        if lock is not None and not lock.tags.get("released") and running:
            return lock, cl
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    pytest.fail("the driver never took its lease and started a cell")


def test_a_driver_whose_lease_is_taken_stops_as_on_ctrl_c(ray_local, run_dir, server):
    """Judged dead (say after a long pause), its lease taken by another driver: the first stops at
    once, its in-flight cell ended KILLED, one line naming the new holder, exit 2."""
    path = write_yaml(run_dir / "t.yaml", SWEEP, name="lt")
    proc = cli("sweep", str(path), "--ray-address", ray_local, "--tracking-uri", server, env={"POLYPRUNE_CELL_DELAY_S": "60"})
    lock, cl = wait_for_lock(server, "lt", proc)
    base, gen = lock.name.rsplit(".", 1)
    now = str(time.time())
    cl.create_registered_model(f"{base}.{int(gen) + 1}", tags={"holder": "other-host:4242", "token": "t", "since": now, "beat": now})
    t0 = time.monotonic()
    code, _, err = finish(proc, timeout=120)
    last = err.strip().splitlines()[-1]  # after the sweep's own progress lines: one line, exit 2
    assert code == 2 and "Traceback" not in err and last.startswith("polyprune sweep: "), err
    assert "the lease was taken over: sweep 'lt' is being run by other-host:4242" in last, err
    assert time.monotonic() - t0 < 40  # a heartbeat or two, not the 60 s cell
    cells = [r for r in runs_of(server, "lt") if "polyprune.cell_id" in r.data.tags]
    assert cells and all(r.info.status == "KILLED" for r in cells), [r.info.status for r in cells]


def test_a_holder_killed_with_9_is_taken_over(ray_local, run_dir, server):
    path = write_yaml(run_dir / "k.yaml", SWEEP, name="lk")
    first = cli("sweep", str(path), "--ray-address", ray_local, "--tracking-uri", server, env={"POLYPRUNE_CELL_DELAY_S": "60"})
    lock, _ = wait_for_lock(server, "lk", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    code, _, err = finish(cli("sweep", str(path), "--ray-address", ray_local, "--tracking-uri", server))
    assert code == 0, err[-2000:]
    after, _ = lock_of(server, "lk")
    assert int(after.name.rsplit(".", 1)[1]) == int(lock.name.rsplit(".", 1)[1]) + 1 and after.tags["released"] == "1"
    cells = [r for r in runs_of(server, "lk") if "polyprune.cell_id" in r.data.tags]
    done = [r.data.tags["polyprune.cell_id"] for r in cells if r.info.status == "FINISHED"]
    assert len(done) == 2 and len(set(done)) == 2, done  # dense + wanda, each finished once
    assert {r.info.status for r in cells} <= {"FINISHED", "KILLED"}  # the dead driver's cell ended KILLED
