"""Every pruned model a first-class MLflow LoggedModel (issue 17) whose artifacts the worker
writes (issue 13 item 2): a real local Ray (`ray_local`), a real sqlite store, and a real
`mlflow server --serve-artifacts` on 127.0.0.1 started and stopped here."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import save_tiny_model, tiny_llama_config
import helpers
from helpers import link_inputs, write_yaml
from orchestrator.cli import main
from orchestrator.models import version_model_id

SWEEP = {
    "name": "m",
    "models": ["./tiny"],
    "methods": ["wanda"],
    "sparsities": [0.5],
    "calibration": {"languages": ["en", "sw"], "data": "./text", "nsamples": 4, "seqlen": 32},
    "seeds": [0],
    "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 4}},
    "resources": {"cpu_workers": 2},
}
PRUNED_FILES = {"masks.safetensors", "calibration.safetensors", "result.json", "losses.json"}  # losses: per window


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def logged_models(cl, name: str) -> list:
    exp = cl.get_experiment_by_name(name)
    return list(cl.search_logged_models([exp.experiment_id], max_results=100))


def model_files(cl, m) -> dict[str, int]:
    from orchestrator.models import model_files

    return model_files(cl, m.model_id)


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory, tiny_llama, text_dir):
    """The 3-cell sweep (dense + wanda calibrated in en and in sw), run once for the module."""
    folder = link_inputs(tmp_path_factory.mktemp("models"), tiny_llama, text_dir)
    path = write_yaml(folder / "sweep.yaml", SWEEP)
    assert main(["sweep", str(path)]) == 0
    return folder, path, f"sqlite:///{folder / 'mlflow.db'}"


def test_every_finished_cell_is_one_ready_logged_model(swept):
    folder, _, uri = swept
    cl = client(uri)
    got = logged_models(cl, "m")
    assert len(got) == 3
    assert sorted(m.name for m in got) == ["tiny-dense", "tiny-wanda-50-en-s0", "tiny-wanda-50-sw-s0"]
    for m in got:
        run = cl.get_run(m.source_run_id)
        assert str(m.status) == "READY" and run.info.status == "FINISHED"
        assert run.data.tags["polyprune.model_id"] == m.model_id
        assert m.tags["polyprune.cell_id"] == run.data.tags["polyprune.cell_id"] and m.tags["polyprune.sweep"] == "m"
        assert m.params == run.data.params
        assert {x.key: x.value for x in m.metrics} == run.data.metrics
        assert {"ppl.en", "ppl.sw", "ppl.mean"} <= run.data.metrics.keys()
        files = model_files(cl, m)
        # written once, into the model's location: the run keeps only what the driver logs
        assert not PRUNED_FILES & {a.path for a in cl.list_artifacts(run.info.run_id)}
        if m.model_type == "polyprune-dense":
            assert set(files) == {"result.json", "losses.json"}
        else:
            assert m.model_type == "polyprune-masks" and set(files) == PRUNED_FILES
            location = Path(m.artifact_location.removeprefix("file://"))
            assert location.is_relative_to(folder / "mlartifacts")  # beside the sqlite store
            assert (location / "masks.safetensors").stat().st_size == files["masks.safetensors"] > 0


def test_resume_creates_no_second_model(swept):
    _, path, uri = swept
    assert main(["sweep", str(path)]) == 0
    assert len(logged_models(client(uri), "m")) == 3


def test_eval_by_model_uri_and_runs_masks_uri_give_the_cells_own_perplexity(swept, text_dir, capsys):
    _, _, uri = swept
    cl = client(uri)
    for m in logged_models(cl, "m"):
        run = cl.get_run(m.source_run_id)
        common = ["--ppl", "en,sw", "--data", str(text_dir), "--nsamples", "4", "--seqlen", "32", "--tracking-uri", uri]
        out = eval_json(capsys, "--model", f"models:/{m.model_id}", *common)
        for lang in ("en", "sw"):
            assert out["metrics"][f"ppl.{lang}"] == pytest.approx(run.data.metrics[f"ppl.{lang}"], rel=1e-6)
        if m.model_type == "polyprune-masks":
            base = m.tags["polyprune.base_model"]
            out = eval_json(capsys, "--model", base, "--masks", f"runs:/{run.info.run_id}/masks.safetensors", *common)
            assert out["metrics"]["ppl.sw"] == pytest.approx(run.data.metrics["ppl.sw"], rel=1e-6)  # a sweep evaluates test


def test_a_model_saved_with_its_weights_evaluates_from_them_not_from_base_and_masks(ray_local, run_dir, text_dir, capsys):
    from orchestrator.models import resolve_model

    path = write_yaml(run_dir / "sweep.yaml", SWEEP, name="w", save_model=True, resources={"cpu_workers": 1},
                      calibration={"languages": ["sw"], "data": "./text", "nsamples": 4, "seqlen": 32})
    assert main(["sweep", str(path)]) == 0
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    cl = client(uri)
    [m] = [m for m in logged_models(cl, "w") if m.model_type != "polyprune-dense"]
    assert m.model_type == "polyprune-weights" and str(m.status) == "READY"
    assert {"model/config.json", "masks.safetensors"} <= set(model_files(cl, m))
    # the base model is gone: only the saved weights can give the cell's perplexity now
    assert m.tags["polyprune.base_model"] == str(run_dir / "tiny")
    (run_dir / "tiny").unlink()
    loaded, masks = resolve_model(cl, f"models:/{m.model_id}", run_dir / "got")
    assert masks is None and Path(loaded).is_relative_to(run_dir / "got") and (Path(loaded) / "config.json").is_file()
    out = eval_json(capsys, "--model", f"models:/{m.model_id}", "--ppl", "en,sw", "--data", str(text_dir),
                    "--nsamples", "4", "--seqlen", "32", "--tracking-uri", uri)
    run = cl.get_run(m.source_run_id)
    for lang in ("en", "sw"):
        assert out["metrics"][f"ppl.{lang}"] == pytest.approx(run.data.metrics[f"ppl.{lang}"], rel=1e-6)


@pytest.mark.parametrize("model,masks,expected", [
    ("models:/m-0123456789abcdef0123456789abcdef", None, "model: 'models:/m-0123456789abcdef0123456789abcdef' does not resolve"),
    ("models:/nobody@best", None, "model: 'models:/nobody@best' does not resolve"),
    ("./tiny", "runs:/0123456789abcdef/masks.safetensors", "masks: 'runs:/0123456789abcdef/masks.safetensors' does not resolve"),
])
def test_a_uri_that_does_not_resolve_is_one_line_exit_2(swept, model, masks, expected, capsys):
    folder, _, uri = swept
    args = ["eval", "--model", model, "--ppl", "en", "--data", str(folder / "text"), "--tracking-uri", uri]
    capsys.readouterr()
    assert main(args + (["--masks", masks] if masks else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_a_failed_cell_has_a_failed_model(ray_local, run_dir, tiny_llama):
    broken = run_dir / "broken"
    broken.mkdir()
    # intact weights (validation reads their headers) that do not fit the config: fails only at load
    save_tiny_model(broken, tiny_llama_config(hidden=32, ffn=64))
    shutil.copy(Path(tiny_llama) / "config.json", broken / "config.json")
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, name="f", models=["./broken"], calibration={
        "languages": ["en"], "data": "./text", "nsamples": 4, "seqlen": 32})
    assert main(["sweep", str(path)]) == 1
    cl = client(f"sqlite:///{run_dir / 'mlflow.db'}")
    got = logged_models(cl, "f")
    assert len(got) == 2 and {str(m.status) for m in got} == {"FAILED"}
    for m in got:
        assert m.tags["polyprune.error"] == cl.get_run(m.source_run_id).data.tags["polyprune.error"]
        assert cl.get_run(m.source_run_id).info.status == "FAILED"
    assert main(["sweep", str(path)]) == 1  # a rerun: new runs, new models, names kept unique
    names = [m.name for m in logged_models(cl, "f")]
    assert len(names) == 4 and len(set(names)) == 4


SEARCH = {
    "name": "s",
    "model": "./tiny",
    "method": "mwanda",
    "sparsity": 0.5,
    "calibration": {"languages": ["en", "sw"], "data": "./text", "nsamples": 4, "seqlen": 32},
    "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 4}},
    "space": "mwanda_mix",
    "objectives": [{"metric": "ppl.sw", "direction": "minimize"}],
    "n_trials": 2,
    "parallel": 2,
    "sampler_seed": 0,
    "baselines": False,  # references, never register's candidates (test_search.py runs them)
    "confirm": False,  # the confirmation stage has its own tests (test_confirm.py)
}


def test_register_the_best_trial_then_again_after_more_trials(ray_local, run_dir, text_dir, capsys):
    path = write_yaml(run_dir / "search.yaml", SEARCH)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    assert main(["search", str(path)]) == 0
    cl = client(uri)
    got = logged_models(cl, "s")
    trial_models = [m for m in got if "polyprune.trial" in m.tags]
    assert len(trial_models) == 2 and len(got) == 3 and {str(m.status) for m in got} == {"READY"}  # + the best's held-out
    assert all(m.tags["polyprune.trial"] == cl.get_run(m.source_run_id).data.tags["polyprune.trial"] for m in trial_models)

    def best_now():
        # register judges on the test split by default: test.ppl.sw, measured (trials measure valid only) by the
        # held-out runs of the trials the search reported best
        ready = [m for m in logged_models(cl, "s") if str(m.status) == "READY" and "test.ppl.sw" in {x.key for x in m.metrics}]
        assert ready and all("polyprune.held_out" in m.tags for m in ready)
        return min(ready, key=lambda m: ({x.key: x.value for x in m.metrics}["test.ppl.sw"], m.creation_timestamp))

    register = ["register", str(path), "--metric", "ppl.sw", "--as", "sw-winner"]
    assert main(register) == 0
    v1 = cl.get_model_version_by_alias("sw-winner", "best")
    assert str(v1.version) == "1" and version_model_id(v1) == best_now().model_id
    value = {x.key: x.value for x in best_now().metrics}["test.ppl.sw"]
    assert "'s'" in v1.description and "ppl.sw" in v1.description and f"{value:.6g}" in v1.description

    assert main(register) == 0  # nothing new: nothing registered
    assert len(cl.search_model_versions("name = 'sw-winner'")) == 1

    assert main(["search", str(path), "--n-trials", "3"]) == 0
    assert len([m for m in logged_models(cl, "s") if "polyprune.trial" in m.tags]) == 5
    best = best_now()
    assert main(register) == 0
    now = cl.get_model_version_by_alias("sw-winner", "best")
    versions = cl.search_model_versions("name = 'sw-winner'")
    if best.model_id == version_model_id(v1):  # the first trials' best still stands: the alias stays
        assert len(versions) == 1 and str(now.version) == "1"
    else:
        assert len(versions) == 2 and str(now.version) == "2" and version_model_id(now) == best.model_id

    run = cl.get_run(best.source_run_id)
    out = eval_json(capsys, "--model", "models:/sw-winner@best", "--ppl", "sw", "--data", str(text_dir),
                    "--nsamples", "4", "--seqlen", "32", "--tracking-uri", uri)
    assert out["metrics"]["ppl.sw"] == pytest.approx(run.data.metrics["test.ppl.sw"], rel=1e-6)  # eval: test split


def test_a_search_file_registers_its_best_trial_on_valid_when_it_ends(ray_local, run_dir, capsys):
    import optuna

    path = write_yaml(run_dir / "search.yaml", SEARCH, name="r", n_trials=1, parallel=1, baselines=False, register="r-best")
    cl = client(f"sqlite:///{run_dir / 'mlflow.db'}")

    def registered_after(args) -> tuple[str, object]:
        capsys.readouterr()
        assert main(["search", str(path), *args]) == 0
        said = [line for line in capsys.readouterr().out.splitlines() if "r-best" in line]
        assert len(said) == 1, said
        return said[0], cl.get_model_version_by_alias("r-best", "best")

    said, v1 = registered_after([])
    [only] = [m for m in logged_models(cl, "r") if "polyprune.trial" in m.tags]  # the trial's model, not its held-out run's
    assert str(v1.version) == "1" and version_model_id(v1) == only.model_id
    assert said.startswith("registered r-best version 1, alias best moved to it")
    run = cl.get_run(only.source_run_id)
    [held] = [m for m in logged_models(cl, "r") if m.tags.get("polyprune.held_out") == run.data.tags["polyprune.trial"]]
    valid, test = run.data.metrics["ppl.sw"], cl.get_run(held.source_run_id).data.metrics["test.ppl.sw"]
    assert valid != test  # a search trial evaluates valid (told), its held-out run test (quoted), on different text
    for part in ("search 'r'", "ppl.sw on valid", f"= {valid:.6g}", f"test {test:.6g}", only.model_id):
        assert part in v1.description, (part, v1.description)

    said, now = registered_after(["--n-trials", "1"])
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    best_run = study.best_trial.user_attrs["mlflow_run_id"]  # chosen on valid, the study's own value
    assert cl.get_run(best_run).data.metrics["ppl.sw"] == min(t.value for t in study.trials)
    versions = cl.search_model_versions("name = 'r-best'")
    if best_run == run.info.run_id:  # the first trial still best: nothing new, the alias stays
        assert len(versions) == 1 and str(now.version) == "1" and "nothing registered" in said
    else:
        assert len(versions) == 2 and str(now.version) == "2" and "version 2, alias best moved" in said
    assert cl.get_logged_model(version_model_id(now)).source_run_id == best_run


def test_a_bad_register_name_in_a_search_file_is_one_line_exit_2_nothing_created(run_dir, capsys):
    path = write_yaml(run_dir / "search.yaml", SEARCH, register="a/b")
    capsys.readouterr()
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "register: 'a/b'" in err, err
    assert not (run_dir / "mlflow.db").exists() and not (run_dir / "optuna.db").exists()


def test_register_input_errors(swept, capsys):
    _, path, _ = swept
    for args, expected in ((["--metric", "ppl.zz", "--as", "x"], "metric: no READY model of 'm' has metric 'ppl.zz'"),
                           (["--metric", "ppl.sw", "--as", "a/b"], "as: 'a/b'"),
                           (["--metric", "ppl.sw", "--split", "train", "--as", "x"], "split: allowed: test, valid")):
        capsys.readouterr()
        assert main(["register", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server --serve-artifacts` on 127.0.0.1: uploads go through its proxy."""
    store = tmp_path / "server"
    store.mkdir()
    with helpers.mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts") as url:
        yield url, store / "artifacts"


def test_artifacts_land_in_the_models_location_through_a_real_server(ray_local, run_dir, mlflow_server, text_dir, capsys):
    url, artifacts = mlflow_server
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, name="srv", tracking_uri=url, calibration={
        "languages": ["sw"], "data": "./text", "nsamples": 4, "seqlen": 32})
    assert main(["sweep", str(path)]) == 0
    cl = client(url)
    got = logged_models(cl, "srv")
    assert len(got) == 2 and {str(m.status) for m in got} == {"READY"}
    pruned = next(m for m in got if m.model_type == "polyprune-masks")
    assert pruned.artifact_location.startswith("mlflow-artifacts:")  # proxied: the worker never saw the folder
    on_disk = next(artifacts.rglob(f"{pruned.model_id}/artifacts"))
    assert {p.name for p in on_disk.iterdir()} == PRUNED_FILES
    assert model_files(cl, pruned)["masks.safetensors"] == (on_disk / "masks.safetensors").stat().st_size
    run = cl.get_run(pruned.source_run_id)
    out = eval_json(capsys, "--model", f"models:/{pruned.model_id}", "--ppl", "sw", "--data", str(text_dir),
                    "--nsamples", "4", "--seqlen", "32", "--tracking-uri", url)
    assert out["metrics"]["ppl.sw"] == pytest.approx(run.data.metrics["ppl.sw"], rel=1e-6)  # a sweep evaluates test


def test_kill_9_of_a_worker_during_its_upload_retries_the_cell_finished_once(ray_local, run_dir, monkeypatch):
    """One worker; it pauses after each uploaded file; once the pruned model's location holds
    a first file but not the last, the worker is killed -9. The cell is retried into the same
    run and model, which end FINISHED / READY once, with every file whole."""
    import psutil

    from orchestrator.engine import record

    monkeypatch.setattr(record, "UPLOAD_DELAY_S", 2.0)
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, name="k", resources={"cpu_workers": 1}, calibration={
        "languages": ["sw"], "data": "./text", "nsamples": 4, "seqlen": 32})
    killed: list[int] = []

    def kill_mid_upload():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for first in (run_dir / "mlartifacts").glob("k/models/*/artifacts/calibration.safetensors"):
                if not (first.parent / "result.json").exists():
                    for p in psutil.process_iter(["cmdline"]):
                        if "CellRunner" in " ".join(p.info["cmdline"] or []) and ours(p):
                            p.kill()
                            killed.append(p.pid)
            time.sleep(0.1)

    def ours(p) -> bool:
        """A worker of this test session's Ray (other sessions' Rays may run on the machine):
        it inherited this session's own cache folder (conftest)."""
        try:
            return p.environ().get("POLYPRUNE_CACHE") == os.environ["POLYPRUNE_CACHE"]
        except psutil.Error:
            return False

    watcher = threading.Thread(target=kill_mid_upload, daemon=True)
    watcher.start()
    assert main(["sweep", str(path)]) == 0
    watcher.join(5)
    assert killed, "the worker was never caught mid-upload"
    cl = client(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = cl.get_experiment_by_name("k").experiment_id
    runs = cl.search_runs([exp], "tags.`polyprune.kind` = 'prune'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["polyprune.retries"] == "1"
    pruned = [m for m in logged_models(cl, "k") if m.model_type == "polyprune-masks"]
    assert len(pruned) == 1 and str(pruned[0].status) == "READY"
    files = model_files(cl, pruned[0])
    assert set(files) == PRUNED_FILES
    from safetensors import safe_open

    location = Path(pruned[0].artifact_location.removeprefix("file://"))
    with safe_open(str(location / "masks.safetensors"), "pt") as f:  # whole: it opens, every tensor reads
        assert all(f.get_tensor(k).numel() > 0 for k in f.keys())
