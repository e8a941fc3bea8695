"""A search rides out its stores' brief outages (issue 31), and past the retry limit stops in one line
and resumes exactly. Real parts only: a PostgreSQL server of the test's own (initdb on a free port, so
stopping it disturbs no one else's database; skipped, never faked, where PostgreSQL is not installed),
a real `mlflow server`, the session's Ray, the tiny search of tests/helpers.py.

- the database under both stores (an `mlflow server` on it and the Optuna storage) stopped 15 s while a
  trial runs and again while a confirmation run runs: exit 0, every trial and confirmation run FINISHED once;
- the storage away past a short limit: one line naming it (password masked), the run in flight KILLED,
  exit 2; the rerun resumes exactly;
- a write that reached the database just before the connection dropped is not made twice (a tell, a new trial);
- an `mlflow server` restarted mid-confirmation, and a Ray worker killed -9 while it runs a confirmation cell.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from helpers import TINY_SEARCH, MlflowServer, cli, finish, free_port, sqlite_rows, write_yaml

BIN = max(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), default=None)
ROOT_WITHOUT_POSTGRES_USER = os.geteuid() == 0 and shutil.which("runuser") is None

SECRET = "s3cret-pw"  # in every URL; trust authentication ignores it, the output must never show it
# no baselines: the two confirmation cells are the selection phase (a test phase needs a baseline to compare with)
CONFIRMING = {**TINY_SEARCH, "confirm": {"top": 1, "selection_seeds": [11, 12], "test_seeds": [13, 14]}}


class Postgres:
    """A PostgreSQL server of this test only: initdb into a temporary folder, TCP on 127.0.0.1 only."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="polyprune-pg-", dir="/tmp")
        self.data, self.port = os.path.join(self.dir, "data"), free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.tool("initdb", "-D", self.data, "-U", "polyprune", "--auth=trust", "--no-sync", "-E", "UTF8")

    def tool(self, name: str, *args: str) -> None:
        subprocess.run([*self.as_user, f"{BIN}/{name}", *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.tool("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.dir, "log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self.tool("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")

    def stopped_for(self, seconds: float) -> None:
        self.stop()
        time.sleep(seconds)
        self.start()

    def database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://polyprune:{SECRET}@127.0.0.1:{self.port}/{db}"

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg():
    if BIN is None or ROOT_WITHOUT_POSTGRES_USER:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def server(pg, tmp_path_factory):
    """An `mlflow server` on the test's PostgreSQL (the cluster setting: both stores on one database); restartable."""
    mlflow = MlflowServer(pg.database("mlflow"), tmp_path_factory.mktemp("artifacts"))
    mlflow.start()
    try:
        yield mlflow
    finally:
        mlflow.stop()


def wait_until(ready, proc, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the search ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.3)


def runs(uri: str, name: str) -> list:
    from mlflow import MlflowClient

    cl = MlflowClient(uri)
    exp = cl.get_experiment_by_name(name)
    return cl.search_runs([exp.experiment_id], max_results=1000) if exp else []


def running(uri: str, name: str, tag: str) -> bool:
    return any(r.info.status == "RUNNING" and tag in r.data.tags for r in runs(uri, name))


def title(proc) -> str:
    """A process's command line as Ray titles a busy actor (`ray::CellRunner.run`); "" once it is gone."""
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def trials(storage: str, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def assert_exact(uri: str, name: str, storage: str, n_trials: int, n_confirm: int) -> None:
    """Every COMPLETE trial and every confirmation cell has exactly one run, FINISHED, and so has the best
    trial's held-out cell (its test split); nothing ran twice."""
    got = [r for r in runs(uri, name) if "polyprune.cell_id" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in got), [(r.info.status, r.data.tags.get("polyprune.error")) for r in got]
    numbers = sorted(int(r.data.tags["polyprune.trial"]) for r in got if "polyprune.trial" in r.data.tags)
    done = sorted(t.number for t in trials(storage, name) if t.state.name == "COMPLETE")
    assert numbers == done and len(done) == n_trials, (numbers, [(t.number, t.state.name) for t in trials(storage, name)])
    confirm = [r.data.tags["polyprune.cell_id"] for r in got if "polyprune.confirm" in r.data.tags]
    assert len(confirm) == len(set(confirm)) == n_confirm, confirm
    held = [r.data.tags["polyprune.cell_id"] for r in got if "polyprune.held_out" in r.data.tags]
    assert len(held) == len(set(held)) == 1, held


def test_a_search_rides_out_its_database_stopped_in_the_trials_and_in_the_confirmation(ray_local, run_dir, pg, server):
    storage = pg.database("optuna_a")
    path = write_yaml(run_dir / "q.yaml", CONFIRMING, name="outage", storage=storage, tracking_uri=server.url)
    proc = cli("search", str(path), "--ray-address", ray_local, env={"POLYPRUNE_CELL_DELAY_S": "8"})
    try:
        # Each time, once the driver has recorded the start and waits for the cell: its heartbeat on the study
        # meets the outage (retried), then the cell's result does (MLflow's HTTP retries, then the tell).
        wait_until(lambda: running(server.url, "outage", "polyprune.trial"), proc, what="trial running")
        time.sleep(1.5)
        pg.stopped_for(15)
        wait_until(lambda: running(server.url, "outage", "polyprune.confirm"), proc, what="confirmation running")
        time.sleep(1.5)
        pg.stopped_for(15)
        code, out, err = finish(proc, timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and SECRET not in err + out, err[-3000:]
    assert "does not answer" in err and "answers again after" in err, err[-3000:]  # the outage was met, and said
    assert_exact(server.url, "outage", storage, n_trials=2, n_confirm=2)
    parent = next(r for r in runs(server.url, "outage") if r.data.tags.get("polyprune.role") == "search")
    assert SECRET not in parent.data.params["storage"] and "***@" in parent.data.params["storage"]  # no password in the record


def test_past_the_retry_limit_a_search_stops_in_one_line_and_resumes_exactly(ray_local, run_dir, pg):
    storage, db = pg.database("optuna_b"), run_dir / "mlflow.db"
    path = write_yaml(run_dir / "q.yaml", TINY_SEARCH, name="gone", storage=storage, tracking_uri=f"sqlite:///{db}")
    proc = cli("search", str(path), "--ray-address", ray_local,
               env={"POLYPRUNE_CELL_DELAY_S": "20", "POLYPRUNE_STORE_RETRY_S": "4"})
    try:
        in_flight = "SELECT count(*) FROM runs JOIN tags USING (run_uuid) WHERE key = 'polyprune.trial' AND status = 'RUNNING'"
        wait_until(lambda: (sqlite_rows(db, in_flight) or [[0]])[0][0] > 0, proc, what="trial running")
        time.sleep(1.5)  # the driver has written the trial's start everywhere and waits for the cell
        pg.stop()  # longer than the limit: the heartbeat's next write gives up while the trial runs
        code, out, err = finish(proc, timeout=200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and SECRET not in err + out, err[-3000:]
    assert last.startswith(f"polyprune search: storage: postgresql+psycopg://polyprune:***@127.0.0.1:{pg.port}/optuna_b "
                           f"did not answer for "), last
    assert "run it again to resume" in last and "cleanup:" not in err  # said once, not again by each clean-up step
    killed = [r for r in runs(f"sqlite:///{db}", "gone") if "polyprune.trial" in r.data.tags]
    assert [r.info.status for r in killed] == ["KILLED"] and "did not answer" in killed[0].data.tags["polyprune.error"]
    pg.start()
    code, out, err = finish(cli("search", str(path), "--ray-address", ray_local), timeout=300)
    assert code == 0, err[-3000:]
    assert "1 trials left RUNNING by a stopped driver re-enqueued" in err, err[-3000:]
    states = sorted((t.state.name, "polyprune.lost" in t.user_attrs) for t in trials(storage, "gone"))
    assert states == [("COMPLETE", False), ("COMPLETE", False), ("FAIL", True)], states  # the lost one re-run
    done = [r for r in runs(f"sqlite:///{db}", "gone") if r.info.status == "FINISHED" and "polyprune.trial" in r.data.tags]
    assert len(done) == 2


def test_a_write_that_reached_the_database_before_its_connection_dropped_is_not_made_twice(pg, monkeypatch):
    """The write commits, then the server stops before the driver hears back (the next statement meets
    it stopped: the real error a dropped connection gives). The retry must find the write done."""
    import optuna

    from orchestrator.search.storage import open_storage

    monkeypatch.setenv("POLYPRUNE_STORE_RETRY_S", "60")
    storage = open_storage(pg.database("optuna_c"))
    study = optuna.create_study(study_name="w", storage=storage, directions=["minimize"])
    inner = storage.inner

    def then_drop(write):
        def call(*args, **kw):
            out = write(*args, **kw)
            pg.stop()
            threading.Timer(2, pg.start).start()
            inner.get_all_studies()  # raises: the connection is gone
            return out
        return call

    monkeypatch.setattr(inner, "create_new_trial", then_drop(inner.create_new_trial))
    trial = study.ask()
    monkeypatch.undo()
    assert [t.number for t in study.get_trials()] == [0] and trial.number == 0
    monkeypatch.setattr(inner, "set_trial_state_values", then_drop(inner.set_trial_state_values))
    study.tell(trial, 1.5)  # told twice, Optuna would refuse: the trial is finished
    monkeypatch.undo()
    assert [(t.number, t.state.name, t.value) for t in study.get_trials()] == [(0, "COMPLETE", 1.5)]


def test_a_confirmation_rides_out_a_server_restart_and_a_worker_killed_9(ray_local, run_dir, server):
    """The `mlflow server` restarted while the first confirmation run runs, then the Ray worker running the
    second confirmation cell killed -9: the cell is retried on a new worker, each confirmation cell FINISHED once."""
    import psutil

    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    path = write_yaml(run_dir / "q.yaml", CONFIRMING, name="conf", storage=storage, tracking_uri=server.url)
    proc = cli("search", str(path), "--ray-address", ray_local, env={"POLYPRUNE_CELL_DELAY_S": "6"})
    try:
        wait_until(lambda: running(server.url, "conf", "polyprune.confirm"), proc, what="confirmation running")
        server.stop()
        time.sleep(10)
        server.start()
        # the second confirmation cell: a run of it RUNNING while the first is FINISHED
        wait_until(lambda: any(r.info.status == "FINISHED" and "polyprune.confirm" in r.data.tags
                               for r in runs(server.url, "conf")) and running(server.url, "conf", "polyprune.confirm"),
                   proc, what="second confirmation running")
        workers = [p for p in psutil.Process().children(recursive=True) if "CellRunner.run" in title(p)]
        assert len(workers) == 1, [p.cmdline() for p in workers]  # this session's Ray only: its one busy worker
        workers[0].send_signal(signal.SIGKILL)
        code, out, err = finish(proc, timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, err[-3000:]
    assert "RETRY" in err and "worker lost" in err, err[-3000:]
    assert_exact(server.url, "conf", storage, n_trials=2, n_confirm=2)
    retried = [r for r in runs(server.url, "conf") if r.data.tags.get("polyprune.retries")]
    assert len(retried) == 1 and "polyprune.confirm" in retried[0].data.tags


def test_an_mlflow_store_on_a_database_rides_out_a_stop(pg, capfd):
    """A tracking URI naming the database itself: MLflow has no retries there; polyprune's client does."""
    from orchestrator import tracking

    uri = pg.database("mlflow_direct")
    cl = tracking.client(uri, create=True)
    run = cl.create_run(tracking.experiment_id(cl, "direct", uri, create=True))
    capfd.readouterr()
    pg.stop()
    threading.Timer(5, pg.start).start()
    cl.log_param(run.info.run_id, "a", "1")  # while the database is stopped: waits, then lands once
    cl.set_terminated(run.info.run_id, "FINISHED")
    got = cl.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"a": "1"}
    err = capfd.readouterr().err
    assert "does not answer" in err and "answers again after" in err and "Traceback" not in err, err[-3000:]
    assert SECRET not in err


def test_an_mlflow_server_away_past_the_limit_is_one_line_and_later_calls_fail_at_once(monkeypatch):
    from mlflow import MlflowClient

    from orchestrator.stores import StoreDown, riding

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own two minutes, shortened
    monkeypatch.setenv("POLYPRUNE_STORE_RETRY_S", "2")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    cl = riding(MlflowClient(url), url)
    t0 = time.monotonic()
    with pytest.raises(StoreDown) as e:
        cl.search_experiments()
    assert 2 <= time.monotonic() - t0 < 60
    assert str(e.value).startswith(f"tracking_uri: {url} did not answer for ") and "Connection refused" in str(e.value)
    assert "\n" not in str(e.value)
    t0 = time.monotonic()
    with pytest.raises(StoreDown):
        cl.get_experiment("0")
    assert time.monotonic() - t0 < 0.5  # the clean-up after it does not wait the limit out again


def test_a_bad_retry_limit_is_one_line_exit_2_before_anything(run_dir, capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("POLYPRUNE_STORE_RETRY_S", "soon")
    path = write_yaml(run_dir / "q.yaml", TINY_SEARCH, name="bad")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["polyprune search: POLYPRUNE_STORE_RETRY_S: seconds a store call is retried while its server is away: "
                   "a number >= 0; got 'soon'"], err
    assert not (run_dir / "mlflow.db").exists()


def test_a_result_recorded_in_mlflow_but_never_told_is_told_on_resume(tmp_path):
    """A tell that met the storage away past the limit after the trial's run FINISHED: the rerun's take-over
    tells the study that run's values (and constraints) instead of re-running the trial; a trial whose run
    did not finish is lost and re-enqueued as before."""
    from types import SimpleNamespace

    import optuna

    from orchestrator import tracking
    from orchestrator.search.study import recorded_result, take_over

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(uri, create=True)
    exp = tracking.experiment_id(cl, "told", uri, create=True)
    study = optuna.create_study(study_name="told", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    cfg = SimpleNamespace(objectives=[SimpleNamespace(metric="ppl.sw")],
                          constraints=[SimpleNamespace(metric="ppl.mean", max=100.0, min=None)])
    for status in ("FINISHED", "KILLED"):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        run = cl.create_run(exp).info.run_id
        trial.set_user_attr("mlflow_run_id", run)
        tracking.log_metrics(cl, run, {"ppl.sw": 12.5, "ppl.mean": 120.0})
        cl.set_terminated(run, status)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert take_over(study, storage, 2, recorded_result(cl, cfg)) == 1
    got = {t.number: t for t in study.get_trials()}
    assert got[0].state.name == "COMPLETE" and got[0].values == [12.5] and got[0].constraints == {"ppl.mean": 20.0}
    assert got[1].state.name == "FAIL" and "polyprune.lost" in got[1].user_attrs
    assert got[2].state.name == "WAITING" and got[2].user_attrs["polyprune.retry_of"] == 1  # re-enqueued
