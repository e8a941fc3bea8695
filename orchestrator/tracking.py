"""MLflow helpers both sweeps and searches use (docs/record.md). Only drivers call this.

experiment = sweep or search name; one parent run per sweep / study, tagged
`polyprune.role=sweep|search` and reused on every rerun; one child run per cell or
trial, tagged `polyprune.cell_id`. A sweep cell counts as done when a child run with
its id is FINISHED; anything else (FAILED, KILLED) is run again on the next invocation.
The tag names here are the record's contract with `status`, `report` and the tests.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.errors import UserError

from .stores import check_uri, creating, riding
from .models import check_model_files, end_model, log_model_params
from .names import (CELL, DRIVER, ERROR, EXPERIMENT_KIND, EXPERIMENT_NOTE, MODEL_DEVELOPMENT, MODEL_HASH, MODEL_ID, PARENT,
                    ROLE, RUN_KIND, SWEEP)
from .schema import seed

TERMINAL = ("FINISHED", "FAILED", "KILLED")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def client(uri: str, create: bool):
    """An MlflowClient, or None when `create` is false and the sqlite file does not exist
    (so a dry run or `status` never creates a database as a side effect)."""
    check_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not create and not path.exists():
        return None
    if path is not None and not path.parent.is_dir():
        raise UserError("tracking_uri", f"folder {str(path.parent)!r} of the sqlite store does not exist")
    from mlflow import MlflowClient

    with creating(path if create else None):  # MLflow creates (or migrates) the schema here: one process at a time
        if create and path is not None and not path.exists():
            seed(path)  # a copy of a migrated empty store, not MLflow's ~4 s of migrations (orchestrator/schema.py)
        return riding(MlflowClient(tracking_uri=uri), uri)  # a database server away for a while: retried


def experiment_id(cl, name: str, uri: str, create: bool) -> str | None:
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError("name", f"experiment {name!r} is deleted in {uri}; restore it (mlflow experiments restore) or rename the sweep")
        return exp.experiment_id
    if not create:
        return None
    # Next to a sqlite store, artifacts go beside the database, not into whatever the cwd is.
    path = sqlite_path(uri)
    location = (path.parent / "mlartifacts" / safe_name(name)).as_uri() if path is not None else None
    from mlflow.exceptions import MlflowException

    try:
        return cl.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_DEVELOPMENT})
    except MlflowException:  # created by a concurrent driver meanwhile: get it
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def open_experiment(name: str, uri: str):
    """(client, experiment id) of an existing sweep or search; UserError naming what exists otherwise."""
    cl = client(uri, create=False)
    if cl is None:
        raise UserError("tracking-uri", f"no MLflow store at {uri}")
    exp = experiment_id(cl, name, uri, create=False)
    if exp is None:
        known = ", ".join(e.name for e in cl.search_experiments(max_results=50) if e.name != "Default") or "none"
        raise UserError("NAME", f"no sweep or search named {name!r} in {uri}; known: {known}")
    return cl, exp


def safe_name(name: str) -> str:
    """A name usable as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def all_runs(cl, exp_id: str, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = cl.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(cl, exp_id: str, sweep: str) -> list:
    return [r for r in all_runs(cl, exp_id, f"tags.`{SWEEP}` = '{sweep}'") if CELL in r.data.tags]


def finished_cells(cl, exp_id: str | None, sweep: str) -> dict[str, Any]:
    """cell_id -> its FINISHED run."""
    if exp_id is None:
        return {}
    return {r.data.tags[CELL]: r for r in child_runs(cl, exp_id, sweep) if r.info.status == "FINISHED"}


def finished_cells_at(uri: str, sweep: str) -> dict[str, Any]:
    """`finished_cells` read without creating anything (a dry run): {} when there is no store or experiment."""
    cl = client(uri, create=False)
    return finished_cells(cl, experiment_id(cl, sweep, uri, create=False) if cl else None, sweep)


def begin_parent(cl, exp_id: str, name: str, role: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """The parent run of a sweep or study (`role`), reused on resume, marked RUNNING by this driver.
    The caller holds the lease (`orchestrator.lease`), so no other driver is running.

    Children left RUNNING by a driver that died are ended KILLED first, so nothing
    stays RUNNING and their cells run again."""
    parents = [r for r in all_runs(cl, exp_id, f"tags.`{ROLE}` = '{role}'") if r.data.tags.get(SWEEP) == name]
    parent = min(parents, key=lambda r: r.info.start_time) if parents else None
    for r in child_runs(cl, exp_id, name):
        if r.info.status in ("RUNNING", "SCHEDULED"):
            why = f"the driver stopped while this {'trial' if role == 'search' else 'cell'} ran (found RUNNING on resume)"
            cl.set_tag(r.info.run_id, ERROR, why)
            cl.set_terminated(r.info.run_id, "KILLED")
            end_model(cl, r.data.tags.get(MODEL_ID), why)
    describe_experiment(cl, exp_id, name, role, params.get("file") or "", cl.tracking_uri)
    if parent is None:
        run = cl.create_run(exp_id, run_name=name, tags={ROLE: role, SWEEP: name})
        run_id = run.info.run_id
        log_params(cl, run_id, params)
    else:
        run_id = parent.info.run_id
        cl.update_run(run_id, status="RUNNING")
    log_tags(cl, run_id, {**tags, DRIVER: f"{socket.gethostname()}:{os.getpid()}"})
    return run_id


def start_cell(cl, exp_id: str, parent_id: str, sweep: str, cell, tags: dict[str, str], run_name: str | None = None,
               params: dict[str, Any] | None = None) -> str:
    """A cell's child run (a search trial's adds its own tags, name and params)."""
    run = cl.create_run(exp_id, run_name=run_name or f"{cell.cell_id[:8]} {cell.label()}",
                        tags={PARENT: parent_id, SWEEP: sweep, CELL: cell.cell_id, RUN_KIND: cell.kind,
                              **model_tags(cell.model), **tags})
    log_params(cl, run.info.run_id, {**cell_params(cell), **(params or {})})
    return run.info.run_id


def cell_params(cell) -> dict[str, Any]:
    """The record's parameter names (docs/record.md): model, method, sparsity, calib, nsamples, seqlen, seed, schedule + method hps."""
    k = cell.key
    ev = k["eval"]
    if not ev["ppl"] and not ev["lm_eval"] and ev.get("test"):  # a search's held-out cell: its test pass is all it measures
        ev = ev["test"]
    from tasks.models import model_name

    out: dict[str, Any] = {"model": k["model"], "model_name": model_name(k["model"]), "dtype": k["dtype"]}
    if cell.kind == "baseline":
        out.update(method="dense", sparsity="0")
    else:
        out.update({n: k[n] for n in ("method", "sparsity", "calib", "data", "nsamples", "seqlen", "seed", "schedule")})
        out.update(k["hp"])
        if k["seqlen"] is None:
            del out["seqlen"]  # resolved from the model by the worker; logged with the result
    if ev["ppl"]:
        out.update({"eval.ppl_languages": ",".join(ev["ppl"]["languages"]), "eval.ppl_data": ev["ppl"]["data"],
                    "eval.ppl_split": ev["ppl"].get("split", "test")})
    if ev["lm_eval"]:
        out.update({"eval.lm_eval_tasks": ",".join(ev["lm_eval"]["tasks"]), "eval.num_fewshot": ev["lm_eval"]["num_fewshot"]})
    return out


def log_params(cl, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        cl.log_batch(run_id, params=items[i:i + 100])


def log_tags(cl, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        cl.log_batch(run_id, tags=items[i:i + 100])


def log_metrics(cl, run_id: str, metrics: dict[str, float], model_id: str | None = None,
                evaluation: dict | None = None) -> None:
    """On the run and, with `model_id`, the same numbers linked to that logged model; `ppl.*` also
    to the `evaluation` dataset they were measured on ({name, digest}): the Models tab groups
    metric columns by dataset and shows those groups first (`test.ppl.*` of a trial is other text)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    on = {"dataset_name": evaluation["name"][:500], "dataset_digest": evaluation["digest"]} if evaluation else {}
    items = [Metric(k, float(v), now, 0, model_id=model_id, **(on if k.startswith("ppl.") else {}))
             for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 1000):
        cl.log_batch(run_id, metrics=items[i:i + 1000])


def finish_cell(cl, run_id: str, out: dict[str, Any]) -> str | None:
    """Record a worker's result dict (metrics, resolved params, placement, and either the
    files it wrote into the run's logged model or artifact bytes). The run ends FINISHED and
    its model READY only when the model's location holds every file the worker reported, at
    its size; otherwise both end FAILED and the reason is returned."""
    model_id = cl.get_run(run_id).data.tags.get(MODEL_ID)
    if out.get("params"):
        log_params(cl, run_id, out["params"])
    log_tags(cl, run_id, out.get("tags", {}))
    if model_id:
        log_model_params(cl, model_id, out.get("params") or {})
        problem = check_model_files(cl, model_id, out.get("files") or {})
        if problem:
            log_metrics(cl, run_id, out["metrics"])
            fail_cell(cl, run_id, problem)
            return problem
    log_metrics(cl, run_id, out["metrics"], model_id, (out.get("datasets") or {}).get("evaluation"))
    log_artifacts(cl, run_id, out.get("artifacts", {}))
    log_datasets(cl, run_id, out.get("datasets", {}))
    if model_id:
        cl.finalize_logged_model(model_id, "READY")
    cl.set_terminated(run_id, "FINISHED")
    return None


def fail_cell(cl, run_id: str, error: str, detail: str = "", status: str = "FAILED", tags: dict | None = None) -> None:
    log_tags(cl, run_id, {**(tags or {}), ERROR: error[:1000]})
    log_artifacts(cl, run_id, {"error.txt": (detail or error).encode()})
    end_model(cl, cl.get_run(run_id).data.tags.get(MODEL_ID), error)
    cl.set_terminated(run_id, status)


def log_artifacts(cl, run_id: str, artifacts: dict[str, bytes]) -> None:
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="polyprune-art-") as tmp:
        for name, data in artifacts.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        cl.log_artifacts(run_id, tmp)


def describe_experiment(cl, exp_id: str, name: str, role: str, file: str, uri: str) -> None:
    """Mark the experiment as model development (the UI opens on its runs table) and say in its
    description where it came from and how to resume and report it."""
    source = file or "(built in code, no file)"
    again = f"polyprune {role} {file}" if file else f"rerun the code that built {name!r}"
    text = (f"polyprune {role} **{name}** from `{source}`.\n\n"
            f"- resume (runs only what is not FINISHED): `{again}`\n"
            f"- progress: `polyprune status {name} --tracking-uri '{uri}'`\n"
            f"- tables and figures: `polyprune report {name} --out {safe_name(name)}-report --tracking-uri '{uri}'`\n")
    cl.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    cl.set_experiment_tag(exp_id, EXPERIMENT_NOTE, text)


def model_tags(model: str) -> dict[str, str]:
    """The demo model's cache hash (its folder has a readable name; the hash says which build)."""
    from tasks.demo_model import model_hash

    digest = model_hash(model) if os.path.isabs(model) else None
    return {MODEL_HASH: digest} if digest else {}


def log_datasets(cl, run_id: str, datasets: dict[str, dict]) -> None:
    """A worker's `datasets` ({context: {name, digest, source, profile}}) as the run's MLflow dataset
    inputs, context `calibration` or `evaluation`: the runs table's Dataset column."""
    if not datasets:
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(Dataset(name=d["name"][:500], digest=d["digest"], source_type="polyprune",
                                   source=json.dumps(d["source"], sort_keys=True), profile=json.dumps(d["profile"], sort_keys=True)),
                           [InputTag(MLFLOW_DATASET_CONTEXT, context)])
              for context, d in datasets.items()]
    cl.log_inputs(run_id, datasets=inputs)


@contextmanager
def no_progress_bars():
    """MLflow's download progress bars off inside (small files read back: a verdict's losses, status, report)."""
    key, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
