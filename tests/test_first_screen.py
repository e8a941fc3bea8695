"""What a new user sees (issue 23): `polyprune --version`, and the whole stderr of a sweep, a search and
`polyprune ui` run as a user runs them (a subprocess starting its own local Ray, no RAY_AUTH_MODE, no
log-level settings): polyprune's lines only; with --verbose the libraries' lines are back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import save_tiny_model, tiny_llama_config
from helpers import RAY_NOTICE, ROOT, foreign, link_inputs, polyprune, short_home, user_env, write_yaml
from tasks.versions import LIBRARIES, version_of

SWEEP = {"name": "first", "models": ["./tiny"], "methods": ["wanda"], "sparsities": [0.5],
         "calibration": {"languages": ["en"], "data": "./text", "nsamples": 4, "seqlen": 32},
         "seeds": [0], "evaluation": {"ppl": {"languages": ["en"], "nsamples": 4}}, "resources": {"cpu_workers": 1}}
SEARCH = {"name": "first-search", "model": "./tiny", "method": "mwanda", "sparsity": 0.5,
          "calibration": {"languages": ["en", "sw"], "data": "./text", "nsamples": 4, "seqlen": 32},
          "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 2}}, "space": "mwanda_mix",
          "objectives": [{"metric": "ppl.sw", "direction": "minimize"}], "baselines": False,
          "n_trials": 1, "parallel": 1, "sampler_seed": 0}

@pytest.fixture(scope="module")
def folder(tmp_path_factory, text_dir):
    """A run folder (./tiny, ./text) and a home of its own."""
    root = tmp_path_factory.mktemp("first-screen")
    model = save_tiny_model(root / "model", tiny_llama_config())
    (root / "run").mkdir()
    run = link_inputs(root / "run", model, text_dir)
    with short_home("fs-") as home:
        (root / "home").symlink_to(home)
        yield run


@pytest.fixture(scope="module")
def swept(folder):
    """The quiet sweep, run once: (its stderr, the folder)."""
    path = write_yaml(folder / "sweep.yaml", SWEEP)
    done = polyprune(["sweep", str(path)], folder, user_env(folder.parent / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr, folder


def test_version_prints_polyprune_and_each_library_without_importing_them():
    code = ("import sys\nfrom orchestrator.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint('imported:', sorted({'torch', 'transformers', 'ray', 'mlflow', 'optuna'} & set(sys.modules)))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"polyprune \d+\.\d+\.\d+\S*( \(git [0-9a-f]{8}(, modified)?\))?", lines[0]), lines[0]
    assert LIBRARIES[0] == "polyprune" and "optuna" in LIBRARIES and "python" in LIBRARIES
    assert lines[1:-1] == [f"{name} {version_of(name)}" for name in LIBRARIES[1:]]  # every one installed here
    assert f"python {sys.version.split()[0]}" in lines
    assert lines[-1] == "imported: []"  # metadata only: fast even where torch takes seconds to import
    assert took < 20, took


def test_a_sweeps_first_screen_is_polyprunes_lines_only(swept):
    err, _ = swept
    assert not foreign(err), err
    assert "sweep first: 2 cells" in err and "[2/2] FINISHED" in err, err


def test_a_searchs_first_screen_is_polyprunes_lines_only(folder):
    path = write_yaml(folder / "search.yaml", SEARCH)
    done = polyprune(["search", str(path)], folder, user_env(folder.parent / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not foreign(done.stderr), done.stderr
    assert not foreign(done.stdout), done.stdout
    # the study names its values (optuna-dashboard and Optuna's plots show these, not "Objective 0")
    import optuna

    study = optuna.load_study(study_name="first-search", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert study.metric_names == ["ppl.sw (valid)"]
    assert "value_ppl.sw (valid)" in study.trials_dataframe().columns


def test_verbose_shows_the_libraries_lines(folder, swept):
    path = write_yaml(folder / "verbose.yaml", SWEEP, name="first-verbose", tracking_uri="sqlite:///verbose.db")
    # Ray begun only once the driver needs it (the other sweeps here begin it early): both start paths run
    done = polyprune(["sweep", str(path), "--verbose"], folder, user_env(folder.parent / "home", POLYPRUNE_EARLY_RAY="0"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert RAY_NOTICE in done.stderr, done.stderr  # Ray's notice on the local cluster it started
    # the same through the environment, and before the command's name; a bad value is one line
    assert polyprune(["--verbose", "sweep", str(path), "--dry-run"], folder, user_env(folder.parent / "home")).returncode == 0
    bad = polyprune(["sweep", str(path), "--dry-run"], folder, user_env(folder.parent / "home", POLYPRUNE_LOG_LEVEL="loud"))
    assert bad.returncode == 2 and bad.stderr.strip().endswith("POLYPRUNE_LOG_LEVEL: allowed: DEBUG, INFO, WARNING; got 'loud'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_file_refused_while_ray_starts_ahead_is_one_line_and_leaves_no_ray(folder):
    """A first run's Ray begins while its file is validated (`RaySession.ahead`); a file refused after
    that (a cell's check imports torch: seconds) still ends in its one line, exit 2, no Ray left running."""
    import psutil

    path = write_yaml(folder / "late.yaml", SWEEP, name="late", tracking_uri="sqlite:///late.db",
                      calibration={**SWEEP["calibration"], "seqlen": 100000})
    with short_home("late-") as home:
        done = polyprune(["sweep", str(path)], folder, user_env(home))
        began = list((home / "ray").rglob("session_*"))  # Ray's temp folder of its own (user_env)
        left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "calibration.seqlen: 100000 is beyond" in done.stderr, done.stderr
    assert began, "Ray did not begin while the file was validated"
    assert not left, left
    assert not (folder / "late.db").exists()


def ui_stderr(folder: Path, *extra: str) -> tuple[str, str]:
    """`polyprune ui` on the sweep's store, stopped once it printed its URL: (stdout, stderr)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "sweep.yaml", "--port", str(port), *extra],
                            cwd=folder, env=user_env(folder.parent / "home"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline()
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(2)  # the server's own lines after it answered, if any
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    return url + out, err


def test_ui_first_screen_is_polyprunes_lines_only(swept):
    _, folder = swept
    out, err = ui_stderr(folder)
    assert len(out.splitlines()) == 1, out  # the URL only: no server notice on stdout either
    assert not foreign(err), err
    assert err.startswith("starting the MLflow UI") and "MLflow UI: http://" in err, err
    out, err = ui_stderr(folder, "--verbose")
    assert "Uvicorn running" in err and "[MLflow] Security middleware" in err, err


def processes_marked(mark: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("POLYPRUNE_TEST_MARK") == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append((p.pid, p.name()))
        except (psutil.Error, OSError):
            pass
    return found


def test_a_bad_file_while_ray_starts_ahead_is_one_line_and_leaves_nothing(folder):
    """A first run starts a local Ray while its file is validated; a file refused then (here after the
    checks that load the tokenizer: seconds) is still one line, exit 2, and no process, store or folder."""
    import uuid

    bad = folder.parent / "bad"
    bad.mkdir()
    for name in ("tiny", "text"):
        (bad / name).symlink_to((folder / name).resolve())
    path = write_yaml(bad / "sweep.yaml", SWEEP, calibration={**SWEEP["calibration"], "languages": ["en", "xx"]})
    before = sorted(p.name for p in bad.iterdir())
    for verbose in ([], ["--verbose"]):
        mark = uuid.uuid4().hex
        done = polyprune([*verbose, "sweep", str(path)], bad, user_env(folder.parent / "home", POLYPRUNE_TEST_MARK=mark))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("polyprune sweep: calibration.languages[1]: language 'xx'"), lines
        if verbose:
            assert RAY_NOTICE in done.stderr, done.stderr  # Ray had started ahead: the test tests something
        else:
            assert len(lines) == 1, lines
        assert processes_marked(mark) == []  # Ray's GCS, raylet, agents and workers all ended
        assert sorted(p.name for p in bad.iterdir()) == before  # no store, no artifacts folder
    assert polyprune(["sweep", str(path), "--dry-run"], bad, user_env(folder.parent / "home")).returncode == 2
