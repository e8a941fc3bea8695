"""Issue 15: one driver per sweep / study (the lease), stores probed before anything starts,
inputs and outputs checked before any work, no litter. Real Ray (the session's), real
sqlite stores, a real `mlflow server` on 127.0.0.1 started here and always stopped."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from helpers import (TINY_SEARCH, TINY_SWEEP, MlflowServer, child_runs, cli, finish, free_port, one_line_refusal, sqlite_rows,
                     write_yaml)
from orchestrator.cli import main

SWEEP, SEARCH = {**TINY_SWEEP, "name": "r"}, {**TINY_SEARCH, "name": "rs"}


# ---------------------------------------------------------------- the lease


def test_two_sweep_drivers_at_once_one_runs_one_is_refused(ray_local, run_dir):
    """Three sweeps, two drivers each, all six started together on one fresh store: per sweep
    one parent run, every cell FINISHED once, the other driver one line and exit 2."""
    names = ["r0", "r1", "r2"]
    files = [write_yaml(run_dir / f"{n}.yaml", SWEEP, name=n) for n in names]
    procs = [cli("sweep", str(f), "--ray-address", ray_local) for f in files for _ in range(2)]
    results = [finish(p) for p in procs]
    db = run_dir / "mlflow.db"
    for i, name in enumerate(names):
        (c1, _, e1), (c2, _, e2) = results[2 * i], results[2 * i + 1]
        assert sorted([c1, c2]) == [0, 2], (e1[-2000:], e2[-2000:])
        one_line_refusal(e1 if c1 == 2 else e2, "sweep", name)
        runs = child_runs(db, name)
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        assert len({r.data.tags["polyprune.cell_id"] for r in runs}) == 2
        assert len(child_runs(db, name, tag="polyprune.role")) == 1  # one parent run


def test_two_search_drivers_at_once_one_runs_one_is_refused(ray_local, run_dir):
    path = write_yaml(run_dir / "search.yaml", SEARCH)
    a, b = cli("search", str(path), "--ray-address", ray_local), cli("search", str(path), "--ray-address", ray_local)
    (c1, _, e1), (c2, _, e2) = finish(a), finish(b)
    assert sorted([c1, c2]) == [0, 2], (e1[-2000:], e2[-2000:])
    one_line_refusal(e1 if c1 == 2 else e2, "search", "rs")
    states = sqlite_rows(run_dir / "optuna.db", "SELECT state FROM trials")
    assert sorted(s for (s,) in states) == ["COMPLETE", "COMPLETE"], states
    runs = child_runs(run_dir / "mlflow.db", "rs")  # the two trials and the best one's held-out run, each once
    kinds = sorted(r.data.tags["polyprune.kind"] for r in runs)
    assert kinds == ["held-out", "trial", "trial"] and all(r.info.status == "FINISHED" for r in runs)


def lease_of(tmp_path: Path, name: str = "x"):
    from orchestrator import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(uri, create=True)
    return cl, tracking.experiment_id(cl, name, uri, create=True), tmp_path / "mlflow.db"


def test_lease_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    from orchestrator import lease
    from tasks.errors import UserError

    cl, exp, db = lease_of(tmp_path)
    uri = f"sqlite:///{db}"
    now = time.time()
    claims = {  # holder -> taken over?
        "other-host:12": (now - 5, False),  # heartbeat fresh: alive as far as anyone can tell
        "other-host:13": (now - lease.DEFAULTS["expiry_s"] - 5, True),  # silent past expiry: a lost node
        f"{socket.gethostname()}:{os.getppid()}": (now - 3600, False),  # this host, process alive (however old its beat)
        f"{socket.gethostname()}:999999999": (now, True),  # this host, process gone (kill -9)
    }
    for holder, (beat, taken) in claims.items():
        probe = lease.Lease("sweep", "x", cl, exp, uri)
        top = probe.read()[0]
        gen = 0 if top is None else top + 1  # a claim as another driver makes it: the next generation
        cl.create_registered_model(probe.base + str(gen), tags={"holder": holder, "token": "t", "since": str(now - 60), "beat": str(beat)})
        if taken:
            with lease.hold("sweep", "x", cl, exp, uri) as held:
                assert held.gen == gen + 1 and probe.read()[1]["holder"] == lease.me()
                assert list(probe.generations()) == [gen + 1]  # the dead holder's generation is gone
            assert probe.read()[1]["released"] == "1"  # released at the end, the generation kept
        else:
            with pytest.raises(UserError, match=f"sweep 'x' is being run by {holder} since .* UTC"):
                lease.hold("sweep", "x", cl, exp, uri).__enter__()


def test_ray_layer_refuses_a_second_holder_in_the_cluster(ray_local, tmp_path):
    from orchestrator import lease
    from tasks.errors import UserError

    cl, exp, db = lease_of(tmp_path)
    a = lease.Lease("sweep", "ray-x", cl, exp)
    a.claim_ray()
    try:
        with pytest.raises(UserError, match="sweep 'ray-x' is being run by"):
            lease.Lease("sweep", "ray-x", cl, exp).claim_ray()
    finally:
        a.release()
    b = lease.Lease("sweep", "ray-x", cl, exp)
    b.claim["holder"] = f"{socket.gethostname()}:999999999"  # as if its driver were killed with -9
    b.claim_ray()  # freed by the release
    t0 = time.monotonic()
    c = lease.Lease("sweep", "ray-x", cl, exp)
    c.claim_ray()  # a dead driver's actor is ended, not waited for
    assert time.monotonic() - t0 < 30
    c.release()


# ---------------------------------------------------------------- stores probed first


def assert_one_line(capsys, code: int, command: str, expected: str, folder: Path) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"polyprune {command}: "), err
    assert expected in err, err
    assert not any(p.name.endswith(".db") or p.name == "mlartifacts" for p in folder.iterdir()), list(folder.iterdir())
    return err


def test_unreachable_server_is_one_line_within_seconds(run_dir, capsys):
    path = write_yaml(run_dir / "sweep.yaml", SWEEP)
    url = f"http://127.0.0.1:{free_port()}"
    for argv, command in ((["sweep", str(path), "--tracking-uri", url], "sweep"),
                          (["sweep", str(path), "--dry-run", "--tracking-uri", url], "sweep"),
                          (["status", "r", "--tracking-uri", url], "status")):
        t0 = time.monotonic()
        code = main(argv)
        assert time.monotonic() - t0 < 10
        assert_one_line(capsys, code, command, f"tracking_uri: no MLflow server answers at {url}", run_dir)


def test_a_ray_address_nobody_listens_on_is_one_line_nothing_created(run_dir, capsys):
    address = f"127.0.0.1:{free_port()}"
    for argv, command in ((["sweep", str(write_yaml(run_dir / "sweep.yaml", SWEEP)), "--ray-address", address], "sweep"),
                          (["search", str(write_yaml(run_dir / "search.yaml", SEARCH)), "--ray-address", f"ray://{address}"],
                           "search")):
        t0 = time.monotonic()
        code = main(argv)
        assert time.monotonic() - t0 < 10  # Ray alone retries such an address for minutes
        assert_one_line(capsys, code, command, "ray-address: nothing answers at", run_dir)


def test_bogus_uris_and_storages_are_one_line_nothing_created(run_dir, capsys):
    path = write_yaml(run_dir / "sweep.yaml", SWEEP)
    assert_one_line(capsys, main(["sweep", str(path), "--tracking-uri", "bogus://x"]), "sweep",
                    "tracking_uri: unknown scheme 'bogus'", run_dir)
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, tracking_uri="bogus://x")
    assert_one_line(capsys, main(["sweep", str(path)]), "sweep", "tracking_uri: unknown scheme 'bogus'", run_dir)
    search = write_yaml(run_dir / "search.yaml", SEARCH)
    assert_one_line(capsys, main(["search", str(search), "--storage", "bogus://x"]), "search", "storage: cannot use 'bogus://x'", run_dir)
    search = write_yaml(run_dir / "search.yaml", SEARCH, storage="bogus://x")
    assert_one_line(capsys, main(["search", str(search)]), "search", "storage: cannot use 'bogus://x'", run_dir)
    assert_one_line(capsys, main(["search", str(search), "--storage", "sqlite:///x.db", "--tracking-uri", "bogus://x"]),
                    "search", "tracking_uri: unknown scheme", run_dir)


def test_a_store_inside_a_ray_job_copy_is_refused(tmp_path, run_dir, capsys):
    """`ray job submit` runs in a per-job copy of the working directory that goes with the job."""
    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    for name in ("tiny", "text"):
        (copy / name).symlink_to(run_dir / name)
    path = write_yaml(copy / "sweep.yaml", SWEEP)
    refused = "lies inside Ray's per-job copy of the working directory"
    assert_one_line(capsys, main(["sweep", str(path), "--dry-run"]), "sweep", f"tracking_uri: 'sqlite:///{copy}/mlflow.db' {refused}", copy)
    assert_one_line(capsys, main(["sweep", str(path)]), "sweep", f"tracking_uri: 'sqlite:///{copy}/mlflow.db' {refused}", copy)
    # The check reads the final store: a store given on the command line is not refused
    # (an unreachable server then fails its own probe, past the copy check).
    assert main(["sweep", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'keep.db'}"]) == 0
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line(capsys, main(["sweep", str(path), "--tracking-uri", url]), "sweep", f"no MLflow server answers at {url}", copy)
    search = write_yaml(copy / "search.yaml", SEARCH)
    outside = [f"--tracking-uri=sqlite:///{tmp_path / 'keep.db'}", f"--storage=sqlite:///{tmp_path / 'keep-optuna.db'}"]
    for argv, expected in (([], f"tracking_uri: 'sqlite:///{copy}/mlflow.db' {refused}"),
                           (outside[:1], f"storage: '{copy}/optuna.db' {refused}, which is deleted with the job; give --storage with a database"),
                           (outside[1:], f"tracking_uri: 'sqlite:///{copy}/mlflow.db' {refused}, which is deleted with the job; "
                                        "give --tracking-uri with a tracking server"),
                           ([f"--tracking-uri={url}", outside[1]], f"no MLflow server answers at {url}")):
        assert_one_line(capsys, main(["search", str(search), *argv]), "search", expected, copy)
    assert not list(tmp_path.glob("*.db"))


# ---------------------------------------------------------------- a server restart mid-sweep


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, local artifacts); restartable; always stopped."""
    store = tmp_path / "server"
    store.mkdir()
    server = MlflowServer(f"sqlite:///{store / 'backend.db'}", store / "artifacts")
    try:
        server.start()
        yield server.url, server.start, server.stop, store
    finally:
        server.stop()


def test_server_restart_mid_sweep_loses_nothing(ray_local, run_dir, mlflow_server):
    url, start, stop, store = mlflow_server
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, sparsities=[0.5, "2:4"], tracking_uri=url)
    proc = cli("sweep", str(path), "--ray-address", ray_local, env={"POLYPRUNE_CELL_DELAY_S": "8"})
    backend = store / "backend.db"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # a cell in flight: the server goes away
            if sqlite_rows(backend, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") and \
                    sqlite_rows(backend, "SELECT count(*) FROM runs WHERE status = 'RUNNING'")[0][0] >= 2:
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        stop()
        time.sleep(20)
        start()
        code, out, err = finish(proc, timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, err[-3000:]
    from mlflow import MlflowClient

    cl = MlflowClient(url)
    exp = cl.get_experiment_by_name("r")
    runs = [r for r in cl.search_runs([exp.experiment_id]) if "polyprune.cell_id" in r.data.tags]
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), [(r.info.status, r.data.tags) for r in runs]
    assert len({r.data.tags["polyprune.cell_id"] for r in runs}) == 3
    from orchestrator.models import has_file

    for r in runs:  # artifacts complete, in each run's logged model
        assert has_file(cl, r.info.run_id, r.data.tags, "result.json")
        assert r.data.params.get("method") == "dense" or has_file(cl, r.info.run_id, r.data.tags, "masks.safetensors")
        assert "ppl.en" in r.data.metrics


# ---------------------------------------------------------------- inputs and outputs checked before work

DRY = {  # sweep-file change -> the one line `sweep --dry-run` (and `sweep`) must print, as `prune` would
    "positions": ({"calibration": {**SWEEP["calibration"], "seqlen": 100000}}, "calibration.seqlen: 100000 is beyond the 256 positions"),
    "ppl positions": ({"evaluation": {"ppl": {"languages": ["en"], "seqlen": 4096}}}, "evaluation.ppl.seqlen: 4096 is beyond"),
    "bool nsamples": ({"calibration": {**SWEEP["calibration"], "nsamples": True}}, "calibration.nsamples: input should be a valid integer"),
    "float workers": ({"resources": {"gpus_per_cell": float("inf")}}, "resources.gpus_per_cell: input should be a finite number"),
    "truncated weights": ({"models": ["./broken"]}, "model.safetensors' is not a complete safetensors weights file"),
    "too little text": ({"calibration": {**SWEEP["calibration"], "nsamples": 100000}}, "calibration.nsamples: 100000 samples of 16 tokens need"),
    "model is a file": ({"models": ["./tiny/config.json"]}, "is a file; expected a model folder"),
    "a thousand workers on a GPU": ({"resources": {"gpus_per_cell": 0.001}},
                                    "resources.gpus_per_cell: input should be greater than or equal to 0.01"),
    "dtype": ({"dtype": "float77"}, "dtype: 'float77' is not one of auto, float32"),
    "endless retries": ({"resources": {"max_retries": 10**9}}, "resources.max_retries: input should be less than or equal to 100"),
}


@pytest.mark.parametrize("case", list(DRY), ids=list(DRY))
def test_dry_run_checks_every_cell_as_prune_does(case, run_dir, tiny_llama, capsys):
    import shutil

    shutil.copytree(tiny_llama, run_dir / "broken")
    weights = run_dir / "broken" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1000)
    over, expected = DRY[case]
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, **over)
    for argv in (["sweep", str(path), "--dry-run"], ["sweep", str(path)]):
        assert_one_line(capsys, main(argv), "sweep", expected, run_dir)


def short_text(run_dir: Path, split: str, lang: str) -> str:
    """./short: the test text with `lang`'s `split` given as a file too short for one 16-token window."""
    (run_dir / "short").mkdir()
    for f in (run_dir / "text").iterdir():
        (run_dir / "short" / f.name).symlink_to(f)
    (run_dir / "short" / f"{lang}.{split}.txt").write_text("tiny\n")
    return "./short"


def test_dry_run_checks_evaluation_text_as_the_cells_read_it(run_dir, capsys):
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, calibration={**SWEEP["calibration"], "data": short_text(run_dir, "test", "en")})
    for argv in (["sweep", str(path), "--dry-run"], ["sweep", str(path)]):
        assert_one_line(capsys, main(argv), "sweep", "evaluation.ppl.languages[0]: test text of 'en'", run_dir)


SEARCH_BAD = {  # search-file change -> its one line, before any study, run or Ray
    "parallel beyond the study": ({"parallel": 1000}, "parallel: 1000 trials in flight is more than n_trials (2"),
    "bool n_trials": ({"n_trials": True}, "n_trials: input should be a valid integer"),
    "dtype": ({"dtype": "float77"}, "dtype: 'float77' is not one of auto, float32"),
    # 1000 x 16 tokens: a mix can put them all on one language, which holds ~13K (the uniform
    # mix's 500 per language would fit: the check is the worst case, not the first trial)
    "text for the worst mix": ({"calibration": {**SEARCH["calibration"], "nsamples": 1000}},
                               "calibration.nsamples: 1000 samples of 16 tokens need 16000 tokens of"),
    "ppl positions": ({"evaluation": {"ppl": {"languages": ["en", "sw"], "seqlen": 4096}}},
                      "evaluation.ppl.seqlen: 4096 is beyond the 256 positions"),
    "valid text": ("valid", "evaluation.ppl.languages[1]: valid text of 'sw'"),
    "test text": ("test", "evaluation.ppl.languages[1]: test text of 'sw'"),
}


@pytest.mark.parametrize("case", list(SEARCH_BAD), ids=list(SEARCH_BAD))
def test_search_checks_every_trial_up_front(case, run_dir, capsys):
    over, expected = SEARCH_BAD[case]
    if isinstance(over, str):  # trials are measured on valid, reported ones and baselines on test: both must serve a window
        over = {"calibration": {**SEARCH["calibration"], "data": short_text(run_dir, over, "sw")}}
    path = write_yaml(run_dir / "search.yaml", SEARCH, **over)
    assert_one_line(capsys, main(["search", str(path)]), "search", expected, run_dir)


def test_database_stores_are_probed_first(run_dir, capsys):
    """postgresql / mysql: a closed port is one line in seconds (the password never shown), a server
    that listens but whose driver is missing is one line naming the driver; nothing created."""
    import importlib.util

    sweep, search = write_yaml(run_dir / "sweep.yaml", SWEEP), write_yaml(run_dir / "search.yaml", SEARCH)
    closed = free_port()
    cases = [(["sweep", str(sweep), "--dry-run", "--tracking-uri", f"mysql://u:secret@127.0.0.1:{closed}/db"], "sweep",
              f"tracking_uri: no database server answers at 127.0.0.1:{closed}"),
             (["search", str(search), "--storage", f"postgresql://u:secret@127.0.0.1:{closed}/db"], "search",
              f"storage: no database server answers at 127.0.0.1:{closed}"),
             (["search", str(search), "--tracking-uri", f"postgresql://u:secret@127.0.0.1:{closed}/db"], "search",
              f"tracking_uri: no database server answers at 127.0.0.1:{closed}")]
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        if importlib.util.find_spec("psycopg2") is None:
            cases.append((["search", str(search), "--storage", f"postgresql+psycopg2://u:secret@127.0.0.1:{port}/db"], "search",
                          "storage: postgresql+psycopg2://u:***@127.0.0.1:" f"{port}/db needs the Python driver 'psycopg2'"))
        for argv, command, expected in cases:
            t0 = time.monotonic()
            code = main(argv)
            assert time.monotonic() - t0 < 10
            assert "secret" not in assert_one_line(capsys, code, command, expected, run_dir)


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nmodels: [a\n  b: c\n")
    assert_one_line(capsys, main(["sweep", str(path), "--dry-run"]), "sweep", "is not valid YAML at line", tmp_path)


def test_outputs_and_files_of_the_wrong_kind_before_any_work(run_dir, tiny_llama, tmp_path, capsys):
    from conftest import save_tiny_model, tiny_llama_config

    common = ["--model", str(tiny_llama), "--method", "wanda", "--sparsity", "0.5", "--calib", "en", "--data",
              str(run_dir / "text"), "--nsamples", "2", "--seqlen", "16"]
    (tmp_path / "afile").write_text("x")
    assert main(["prune", *common, "--out", str(tmp_path / "afile" / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # A killed run's temp folder is removed by the next run into the same place; a live one's is not.
    dead, live = tmp_path / ".out.tmp-999999999", tmp_path / f".out.tmp-{os.getppid()}"
    dead.mkdir(), live.mkdir()
    out = tmp_path / "out"
    assert main(["prune", *common, "--out", str(out)]) == 0, capsys.readouterr().err
    assert not dead.exists() and live.exists() and (out / "masks.safetensors").is_file()
    capsys.readouterr()

    ev = ["eval", "--model", str(tiny_llama), "--ppl", "en", "--data", str(run_dir / "text"), "--nsamples", "1", "--seqlen", "16"]
    cases = {
        "out folder": ([*ev, "--out", str(tmp_path)], "out: "),
        "calibration as masks": ([*ev, "--masks", str(out / "calibration.safetensors")], "is not a polyprune masks file"),
        "folder as masks": ([*ev, "--masks", str(out)], "is a folder; expected the file masks.safetensors written by prune; did you mean"),
        "not safetensors": ([*ev, "--masks", str(out / "result.json")], "is corrupt or truncated"),
    }
    other = save_tiny_model(tmp_path / "other", tiny_llama_config(hidden=32, ffn=64))
    cases["masks of another model"] = (["eval", "--model", str(other), "--ppl", "en", "--data", str(run_dir / "text"),
                                        "--masks", str(out / "masks.safetensors")], "does not fit this model")
    for name, (argv, expected) in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (name, err)
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("watch", ["0", "-1", "nan"])
def test_status_watch_needs_a_positive_interval(watch, tmp_path, capsys):
    assert main(["status", "x", "--watch", watch, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "watch: must be a positive number of seconds" in err, err


def test_infinite_hyperparameter_says_finite(tiny_llama, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_llama), "--method", "mwanda", "--sparsity", "0.5", "--calib", "en",
                 "--hp", "lambda_var=inf", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be a finite float, got 'inf'" in err, err
    assert not (tmp_path / "o").exists()
