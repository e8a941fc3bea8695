"""Every pruned model a first-class MLflow LoggedModel (issue 17) whose artifacts the worker
writes (issue 13 item 2): a real local Ray (`ray_local`), a real sqlite store, and a real
`mlflow server --serve-artifacts` on 127.0.0.1 started and stopped here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import link_inputs, write_yaml
from orchestrator.cli import main

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
PRUNED_FILES = {"masks.safetensors", "calibration.safetensors", "result.json"}


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
            assert set(files) == {"result.json"}
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
            assert out["metrics"]["ppl.sw"] == pytest.approx(run.data.metrics["ppl.sw"], rel=1e-6)


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
    shutil.copy(Path(tiny_llama) / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
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
