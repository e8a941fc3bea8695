"""Browsing the record (issue 10): the example files run as shipped on the `demo` alias, every
run carries its calibration and evaluation data as MLflow dataset inputs, `polyprune ui` opens
on the runs table and `polyprune dashboard` on the study, and both leave no server behind.

One module-scoped record: the shipped example sweep and search, shrunk (fewer cells, fewer
samples), on the session's Ray and the shortened demo model (conftest: POLYPRUNE_DEMO_STEPS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, child_runs

from orchestrator.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STARTUP_S = 420  # an MLflow server takes ~20 s to answer on an idle 2-core machine, minutes on a loaded one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shrink(shipped: Path, out: Path, top: dict, calibration: dict, ppl: dict) -> Path:
    raw = yaml.safe_load(shipped.read_text())
    raw.update(top)
    raw["calibration"].update(calibration)
    raw["evaluation"]["ppl"].update(ppl)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def record(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    sweep = shrink(ROOT / "sweeps" / "tiny_local.yaml", folder / "sweep.yaml",
                   {"methods": ["wanda", "mwanda"], "sparsities": [0.6], "seeds": [0], "resources": {"cpu_workers": 1}},
                   {"languages": ["en", "en=0.5,sw=0.5"], "nsamples": 4}, {"languages": ["en", "sw"], "nsamples": 2})
    search = shrink(ROOT / "searches" / "tiny_local.yaml", folder / "search.yaml",
                    {"n_trials": 2, "parallel": 1, "baselines": False, "confirm": False},
                    {"nsamples": 4}, {"nsamples": 2})
    assert main(["sweep", str(sweep)]) == 0
    assert main(["search", str(search)]) == 0
    return folder


def test_example_files_validate_as_shipped_with_the_demo_alias():
    from orchestrator.search.file import load_search
    from orchestrator.sweep.file import expand, load_sweep
    from tasks.demo_model import NAME, alias_config, demo_model_path

    demo = str(demo_model_path(alias_config(), progress=False))
    cfg = load_sweep(ROOT / "sweeps" / "tiny_local.yaml")
    assert cfg.models == [demo] and Path(demo).name == NAME and len(expand(cfg)) == 65
    assert load_search(ROOT / "searches" / "tiny_local.yaml")[0].model == demo


def test_experiments_open_on_runs_and_say_how_to_resume(record):
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{record / 'mlflow.db'}")
    for name, file, verb in (("tiny-local", "sweep.yaml", "sweep"), ("tiny-local-search", "search.yaml", "search")):
        tags = cl.get_experiment_by_name(name).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        note = tags["mlflow.note.content"]
        assert f"polyprune {verb} {record / file}" in note and f"polyprune report {name}" in note and f"polyprune status {name}" in note


def test_runs_have_readable_model_names(record):
    from tasks.demo_model import NAME

    runs = child_runs(record / "mlflow.db", "tiny-local") + child_runs(record / "mlflow.db", "tiny-local-search")
    assert len(runs) == 5 + 2 + 1  # the sweep's cells, the search's trials and its best trial's held-out run
    for r in runs:
        assert r.data.params["model_name"] == NAME
        assert r.data.tags["polyprune.model_hash"] == Path(r.data.params["model"]).parent.name
    searched = ("polyprune.trial", "polyprune.held_out")  # named "trial N", "held-out trial N"
    assert all(NAME in r.info.run_name for r in runs if not any(t in r.data.tags for t in searched))


def test_every_run_has_calibration_and_evaluation_inputs_matching_the_fingerprints(record):
    from tasks.api import load_model
    from tasks.data.calibration import eval_key, fingerprint, sample_calibration
    from tasks.data.langs import parse_mix
    from tasks.data.sources import get_source

    runs = child_runs(record / "mlflow.db", "tiny-local") + child_runs(record / "mlflow.db", "tiny-local-search")
    # a held-out run measures test only, nested as its test pass: its evaluation input is that pass's text
    held = [r for r in runs if "polyprune.held_out" in r.data.tags]
    assert len(held) == 1 and held[0].data.params["eval.ppl_split"] == "test"
    _, tok = load_model(runs[0].data.params["model"])
    source = get_source("builtin")
    seen = set()
    for r in runs:
        p = r.data.params
        inputs = {d.tags[0].value: d.dataset for d in r.inputs.dataset_inputs}
        ev = inputs["evaluation"]
        langs, n, seqlen = p["eval.ppl_languages"].split(","), 2, 64
        split = p["eval.ppl_split"]  # a sweep's cells: test; a search's trials: valid (what the sampler saw)
        assert split == ("valid" if "polyprune.trial" in r.data.tags else "test")
        assert ev.digest == fingerprint({"windows": [eval_key(source, tok, l, seqlen, split) for l in langs], "nsamples": n})
        assert ev.name == f"builtin {split} {p['eval.ppl_languages']}"
        assert json.loads(ev.profile)["tokens"] == {l: n * seqlen for l in langs}
        if p["method"] == "dense":
            assert set(inputs) == {"evaluation"}
            continue
        cal = inputs["calibration"]
        drawn = sample_calibration(source, tok, parse_mix(p["calib"]), int(p["nsamples"]), int(p["seqlen"]), int(p["seed"]))
        assert cal.digest == drawn.fingerprint and cal.name == f"builtin calib {p['calib']}"
        tokens = json.loads(cal.profile)["tokens"]
        assert tokens == {l: int((drawn.language == i).sum()) * 64 for i, l in enumerate(drawn.languages)}
        assert sum(tokens.values()) == 4 * 64
        seen.add(cal.digest)
    assert len(seen) >= 2  # different mixes are different data


# ---------------------------------------------------------------- servers


def start(args: list[str], stderr=None) -> tuple[subprocess.Popen, str]:
    """`polyprune ARGS` in a subprocess, and the URL it prints once its server answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=subprocess.PIPE, text=True, env=env,
                            stderr=stderr)
    deadline = time.monotonic() + STARTUP_S
    for line in proc.stdout:  # mlflow writes a notice of its own on stdout too
        if line.startswith("http://"):
            return proc, line.strip()
        assert time.monotonic() < deadline, "no URL in time"
    pytest.fail(f"{args[0]} exited {proc.wait()} without a URL")


def stop_and_check_nothing_survives(proc: subprocess.Popen) -> None:
    import psutil

    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 2  # the command and its server at least
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                              for p in family):
        time.sleep(0.2)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {alive}"


@pytest.fixture(scope="module")
def ui(record):
    proc, url = start(["ui", str(record / "sweep.yaml"), "--port", str(free_port())])
    yield proc, url
    end(proc)


def end(proc: subprocess.Popen) -> None:
    """Stop a `polyprune ui` / `dashboard` a failed test left running: SIGTERM, so it stops its
    server's process group too (a SIGKILL would orphan the server)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def shown(value: float) -> str:
    """The first digits of `value` as the runs table prints it: in full (JavaScript's shortest repr, as
    Python's), so cut, never rounded (14.9497 rounded to 3 places is "14.950", which the page lacks)."""
    return repr(value)[:5]


def dom_text(url: str, profile: Path, width: int = 2200) -> str:
    """What headless Chromium shows at `url` once the JS app had virtual time to fetch and draw."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={profile}", f"--window-size={width},900",
                          "--virtual-time-budget=30000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=300).stdout
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
def test_ui_url_renders_the_runs_table_in_chromium(ui, record, tmp_path):
    _, url = ui
    assert re.search(r"/#/experiments/\d+/runs\?.*workflowType=machine_learning", url), url
    text = dom_text(url, tmp_path / "profile")
    for r in child_runs(record / "mlflow.db", "tiny-local"):
        assert r.info.run_name in text, r.info.run_name  # child runs listed, not folded under their parent
    assert "Run Name" in text and "ppl.mean" in text and "ppl.en" in text
    ppl_en = min(r.data.metrics["ppl.en"] for r in child_runs(record / "mlflow.db", "tiny-local"))
    assert shown(ppl_en) in text, (ppl_en, text[-3000:])  # a metric value, not only a column header
    assert "builtin calib en=1" in text  # the Dataset column


def test_ui_stops_with_its_server_on_sigterm(ui):
    stop_and_check_nothing_survives(ui[0])


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
def test_ui_models_view_lists_every_logged_model_with_its_ppl_columns(record, tmp_path):
    from mlflow import MlflowClient

    proc, url = start(["ui", str(record / "sweep.yaml"), "--view", "models", "--port", str(free_port())])
    try:
        assert re.search(r"/#/experiments/\d+/models\?workflowType=machine_learning$", url), url
        # the grid draws only the columns in view: wide enough for the dataset's three ppl columns
        text = dom_text(url, tmp_path / "profile", width=2800)
        cl = MlflowClient(f"sqlite:///{record / 'mlflow.db'}")
        got = cl.search_logged_models([cl.get_experiment_by_name("tiny-local").experiment_id], max_results=100)
        assert len(got) == 5
        for m in got:
            assert m.name in text, (m.name, text[:3000])
        assert "ppl.mean" in text and "ppl.en" in text and "ppl.sw" in text, text[:3000]
        assert "Dataset: builtin test en,sw" in text  # the ppl columns' group: the text they were measured on
        ppl_en = min({x.key: x.value for x in m.metrics}["ppl.en"] for m in got)
        assert shown(ppl_en) in text, (ppl_en, text[-3000:])  # a value, not only a column header
    finally:
        stop_and_check_nothing_survives(proc)


def test_ui_run_as_the_demo_prints_it_opens_the_newest_experiments_runs(record, tmp_path):
    """`polyprune demo` ends with `all runs: polyprune ui --tracking-uri URI`: a store, no name. Run so
    (plus a free port: 5000 may be taken here), it opens the newest polyprune experiment's runs table,
    here the search's (made after the sweep, as in the demo), not MLflow's front page (issue 31)."""
    import shlex

    from mlflow import MlflowClient

    from orchestrator.cli.demo import ui_line

    printed = shlex.split(ui_line(f"sqlite:///{record / 'mlflow.db'}"))
    assert printed[:2] == ["polyprune", "ui"] and "--port" not in printed
    proc, url = start(printed[1:] + ["--port", str(free_port())])
    try:
        exp = MlflowClient(f"sqlite:///{record / 'mlflow.db'}").get_experiment_by_name("tiny-local-search").experiment_id
        assert re.search(rf"/#/experiments/{exp}/runs\?viewStateShareKey=polyprune&workflowType=machine_learning$", url), url
        if CHROMIUM is not None:
            text = dom_text(url, tmp_path / "profile")
            every = child_runs(record / "mlflow.db", "tiny-local-search")  # its 2 trials and the best one's held-out run
            runs = [r for r in every if "polyprune.trial" in r.data.tags]
            assert len(runs) == 2 and len(every) == 3
            for r in every:
                assert r.info.run_name in text, (r.info.run_name, text[:3000])
            assert "ppl.sw" in text and "ppl.mean" in text and "ppl.en" in text, text[:3000]
            ppl_sw = min(r.data.metrics["ppl.sw"] for r in runs)
            assert shown(ppl_sw) in text, (ppl_sw, text[-3000:])  # a value, not only a header
    finally:
        stop_and_check_nothing_survives(proc)


def test_ui_on_a_store_without_polyprune_experiments_says_so_and_opens_the_front_page(tmp_path):
    from orchestrator import tracking
    from orchestrator.names import EXPERIMENT_KIND, MODEL_DEVELOPMENT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(uri, create=True)
    cl.create_experiment("someone-elses", tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})  # not described by polyprune
    port = free_port()
    with open(tmp_path / "err.txt", "w") as err:
        proc, url = start(["ui", "--tracking-uri", uri, "--port", str(port)], stderr=err)
    try:
        assert url == f"http://127.0.0.1:{port}/", url
    finally:
        stop_and_check_nothing_survives(proc)
    lines = (tmp_path / "err.txt").read_text().splitlines()
    assert f"polyprune ui: {uri} holds no polyprune sweep or search: opening MLflow's front page" in lines, lines


def test_newest_experiment_reads_experiment_tags(record):
    from orchestrator import tracking
    from orchestrator.cli.ui import newest_experiment

    cl = tracking.client(f"sqlite:///{record / 'mlflow.db'}", create=False)
    assert newest_experiment(cl) == cl.get_experiment_by_name("tiny-local-search").experiment_id


def test_ui_on_a_taken_port_is_one_line_and_nonzero(record, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", str(record / "sweep.yaml"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("polyprune ui: port:") and str(port) in err[0], err


def test_ui_unknown_view_is_one_line_exit_2(record, capsys):
    assert main(["ui", str(record / "sweep.yaml"), "--view", "tree", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("polyprune ui: view: allowed: runs, models"), err


def test_dashboard_serves_the_study_then_stops_on_sigterm(record):
    proc, url = start(["dashboard", str(record / "search.yaml"), "--port", str(free_port())])
    try:
        study = re.search(r"/dashboard/studies/(\d+)$", url)
        assert study, url
        base = url.split("/dashboard/")[0]
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/api/studies/{study.group(1)}", timeout=60) as r:
            assert r.status == 200
            body = json.load(r)
        assert body["name"] == "tiny-local-search"
        assert sum(t["state"].lower() == "complete" for t in body["trials"]) == 2
        stop_and_check_nothing_survives(proc)
    finally:
        end(proc)


def test_dashboard_bad_input_is_one_line_exit_2(record, tmp_path, capsys):
    cases = [(["dashboard", str(record / "sweep.yaml")], "SEARCH.yaml"),
             (["dashboard", "x", "--storage", f"sqlite:///{tmp_path / 'none.db'}"], "storage"),
             (["dashboard", str(record / "search.yaml"), "--port", "0"], "port")]
    for args, field in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"polyprune dashboard: {field}:"), err
    assert not (tmp_path / "none.db").exists()
