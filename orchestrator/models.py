"""Pruned models as MLflow 3 `LoggedModel`s, and the `models:/` / `runs:/` URIs that name them.

Every cell (and every dense baseline, and every search trial) gets one logged model, made by
the driver next to the cell's run: a readable unique name, the run's params, tags
`polyprune.cell_id` / `polyprune.sweep`, `source_run_id` = the run, status PENDING. The
worker writes the artifacts straight into the model's artifact location; the driver then
checks the listing against the file sizes the worker reported, logs the metrics with
`model_id` (the same numbers land on the run) and only then makes the model READY and the
run FINISHED. The run carries the model's id as tag `polyprune.model_id`.

URIs (`resolve_model`, `resolve_file`): `models:/<model_id>`, `models:/<name>@<alias>`,
`models:/<name>/<version>` (registered), `runs:/<run_id>/<path>`; anything that does not
resolve is a UserError naming the field. This module sits below `tracking` (it imports no
other orchestrator module), so both the record and the commands use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.errors import UserError

from .names import BASE_MODEL, ERROR, MODEL_ID
MASKS_TYPE, WEIGHTS_TYPE, DENSE_TYPE = "polyprune-masks", "polyprune-weights", "polyprune-dense"


# ---------------------------------------------------------------- names


def slug(text: str) -> str:
    """MLflow forbids / : . % " ' in model names; keep letters, digits, - and _."""
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "model"


def sparsity_part(sparsity: Any) -> str:
    s = str(sparsity)
    if ":" in s:
        return s.replace(":", "of")
    return f"{float(s) * 100:g}".replace(".", "p")


def calib_part(calib: str) -> str:
    """`en=1` -> en, `en=0.5,sw=0.5` -> en50-sw50."""
    parts = [p.split("=") for p in calib.split(",")]
    if len(parts) == 1:
        return slug(parts[0][0])
    return "-".join(f"{slug(l)}{float(w) * 100:.0f}" for l, w in parts)


def model_name(cell, trial: int | None = None) -> str:
    """e.g. llama3-8b-wanda-50-sw-s0, tiny-mwanda-2of4-en50-sw50-s0-t3, tiny-dense."""
    k = cell.key
    parts = [slug(Path(k["model"]).name)]
    if cell.kind == "baseline":
        parts.append("dense")
    else:
        parts += [slug(k["method"]), sparsity_part(k["sparsity"]), calib_part(k["calib"]), f"s{k['seed']}"]
    if trial is not None:
        parts.append(f"t{trial}")
    return "-".join(parts)


def unique_name(cl, exp_id: str, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... when the experiment has it already (a cell run again
    after a failure, or two cells that differ only in what the name leaves out)."""
    taken = {m.name for m in all_models(cl, exp_id, f"name LIKE '{name}%'")}
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def all_models(cl, exp_id: str, filter_string: str | None = None) -> list:
    out, token = [], None
    while True:
        page = cl.search_logged_models([exp_id], filter_string=filter_string, max_results=100, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


# ---------------------------------------------------------------- the driver's side


def create(cl, exp_id: str, run_id: str, cell, tags: dict[str, str], params: dict[str, Any],
           trial: int | None = None, save_model: bool = False):
    """The PENDING logged model of a cell's run (`tags`: the run's cell and sweep tags); tags the
    run with its id. Returns the LoggedModel."""
    kind = DENSE_TYPE if cell.kind == "baseline" else WEIGHTS_TYPE if save_model else MASKS_TYPE
    name = unique_name(cl, exp_id, model_name(cell, trial))
    m = cl.create_logged_model(exp_id, name=name, source_run_id=run_id, model_type=kind,
                               params={k: str(v)[:6000] for k, v in params.items()},
                               tags={BASE_MODEL: cell.key["model"], **tags})
    cl.set_tag(run_id, MODEL_ID, m.model_id)
    return m


def destination(model, tracking_uri: str) -> dict[str, str]:
    """What a worker needs to write into the model's artifact location."""
    return {"uri": model.artifact_location, "tracking_uri": tracking_uri, "model_id": model.model_id}


# ---------------------------------------------------------------- a cell's LoggedModel


def log_model_params(cl, model_id: str, params: dict[str, Any]) -> None:
    if params:
        cl.log_model_params(model_id, {k: str(v)[:6000] for k, v in params.items()})


def model_files(cl, model_id: str, path: str | None = None) -> dict[str, int | None]:
    """path -> size of every file in a logged model's artifact location."""
    out: dict[str, int | None] = {}
    for f in cl.list_logged_model_artifacts(model_id, path):
        if f.is_dir:
            out.update(model_files(cl, model_id, f.path))
        else:
            out[f.path] = f.file_size
    return out


def check_model_files(cl, model_id: str, files: dict[str, int]) -> str | None:
    """None when the model's location holds every reported file at its size; else what is wrong."""
    if not files:
        return "the worker reported no artifacts written to the model's location"
    listed = model_files(cl, model_id)
    for path, size in sorted(files.items()):
        if path not in listed:
            return f"artifact {path} is missing from the model's location"
        if listed[path] is not None and listed[path] != size:
            return f"artifact {path} has {listed[path]} bytes in the model's location; the worker wrote {size}"
    return None


def end_model(cl, model_id: str | None, error: str) -> None:
    """A cell that did not finish: its model, while still PENDING, ends FAILED with the error."""
    if not model_id:
        return
    try:
        if str(cl.get_logged_model(model_id).status) != "PENDING":
            return
        cl.set_logged_model_tags(model_id, {ERROR: error[:1000]})
        cl.finalize_logged_model(model_id, "FAILED")
    except Exception:  # a model deleted by hand: nothing to end
        pass


# ---------------------------------------------------------------- the registry

ALIAS = "best"  # the alias `register` (the command and a search's `register:`) moves to the winner


def check_registered_name(name: str, field: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise UserError(field, f"{name!r}: a registered model name of letters, digits, - and _")


def register(cl, name: str, model, description: str, tags: dict[str, str]) -> tuple[str, bool]:
    """`model` (a LoggedModel) as a new version of registered model `name` with alias `best`:
    (version, True). When `name@best` names that model already, nothing is registered:
    (its version, False), so registering the same winner twice leaves one version."""
    try:
        current = cl.get_model_version_by_alias(name, ALIAS)
    except Exception:  # no such registered model or alias yet
        current = None
    if current is not None and version_model_id(current) == model.model_id:
        return str(current.version), False
    try:
        cl.get_registered_model(name)
    except Exception:
        cl.create_registered_model(name, description="pruned models chosen by polyprune register")
    version = cl.create_model_version(name, source=model.artifact_location, run_id=model.source_run_id,
                                      model_id=model.model_id, description=description,
                                      tags={MODEL_ID: model.model_id, **tags})
    cl.set_registered_model_alias(name, ALIAS, version.version)
    return str(version.version), True


def register_best(cl, name: str, model, description: str, tags: dict[str, str]) -> str:
    """THE register path (`polyprune register` and a search's `register:`): `register`, and the
    line that says what happened."""
    version, moved = register(cl, name, model, description, tags)
    if not moved:
        return f"{name}@{ALIAS} is version {version} already: {description}; nothing registered"
    return f"registered {name} version {version}, alias {ALIAS} moved to it: {description}"


# ---------------------------------------------------------------- URIs

def logged_model(cl, uri: str, field: str):
    """The LoggedModel a `models:/` URI names (by id, `name@alias` or `name/version`)."""
    ref = uri[len("models:/"):].strip("/")
    try:
        if re.fullmatch(r"m-[0-9a-f]{32}", ref):
            return cl.get_logged_model(ref)
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = cl.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.rsplit("/", 1)
            version = cl.get_model_version(name, number)
        else:
            raise UserError(field, f"{uri!r}: give models:/<model_id>, models:/<name>@<alias> or models:/<name>/<version>")
        model_id = version_model_id(version)
        if not model_id:
            raise UserError(field, f"{uri!r} is a registered version without a logged model (not one of polyprune's)")
        return cl.get_logged_model(model_id)
    except UserError:
        raise
    except Exception as e:
        raise UserError(field, f"{uri!r} does not resolve: {str(e).splitlines()[0][:200]}") from None


def version_model_id(version) -> str | None:
    """The logged model of a registered version: MLflow's own link where the store keeps it (a
    sqlite store does not), else the tag `polyprune register` sets."""
    return version.model_id or (version.tags or {}).get(MODEL_ID)


def resolve_model(cl, uri: str, dest: Path, field: str = "model") -> tuple[str, Path | None]:
    """(what `load_model` takes, masks file or None) for a `models:/` URI: the saved weights when
    the model has them, else its base model plus its masks, downloaded into `dest`."""
    if not uri.startswith("models:/"):
        raise UserError(field, f"{uri!r}: a model URI starts with models:/")
    m = logged_model(cl, uri, field)
    if str(m.status) != "READY":
        raise UserError(field, f"{uri!r} is {m.status}, not READY: {m.tags.get(ERROR, 'its artifacts are incomplete')}")
    files = model_files(cl, m.model_id)
    dest.mkdir(parents=True, exist_ok=True)
    repo = artifact_repo(m.artifact_location, cl.tracking_uri)
    if any(p.startswith("model/") for p in files):
        return str(Path(repo.download_artifacts("model", str(dest)))), None
    if m.model_type == DENSE_TYPE:
        return m.tags[BASE_MODEL], None
    if "masks.safetensors" not in files:
        raise UserError(field, f"{uri!r} has neither saved weights nor masks.safetensors")
    return m.tags[BASE_MODEL], Path(repo.download_artifacts("masks.safetensors", str(dest)))


def resolve_file(cl, uri: str, dest: Path, field: str) -> Path:
    """A local copy of the file `runs:/<run_id>/<path>` names (kept in the run's logged model
    when it has one, as polyprune's cells do, else among the run's own artifacts)."""
    if not uri.startswith("runs:/"):
        raise UserError(field, f"{uri!r}: a file URI is runs:/<run_id>/<path>")
    run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
    if not run_id or not path:
        raise UserError(field, f"{uri!r}: give runs:/<run_id>/<path>")
    try:
        run = cl.get_run(run_id)
    except Exception:
        raise UserError(field, f"{uri!r} does not resolve: no run {run_id} in {cl.tracking_uri}") from None
    try:
        got = run_file(cl, run.info.run_id, run.data.tags, path, dest)
    except Exception as e:
        raise UserError(field, f"{uri!r} does not resolve: {str(e).splitlines()[0][:200]}") from None
    if got is None:
        raise UserError(field, f"{uri!r} does not resolve: run {run_id} has no artifact {path}")
    return got


def holds(files: dict, path: str) -> bool:
    """Is `path` one of `files`, or a folder of them (`model` for `model/config.json`)?"""
    return path in files or any(f.startswith(path.rstrip("/") + "/") for f in files)


def has_file(cl, run_id: str, tags: dict, path: str) -> bool:
    """Does the run (its logged model, else its own artifacts) hold `path` (a file or a folder)?"""
    model_id = tags.get(MODEL_ID)
    if model_id and holds(model_files(cl, model_id), path):
        return True
    parent = str(Path(path).parent) if "/" in path else None
    return path in {a.path for a in cl.list_artifacts(run_id, parent)}


def run_file(cl, run_id: str, tags: dict, path: str, dest: Path) -> Path | None:
    """A run's artifact `path` downloaded into `dest` (from its logged model's location when
    the run has one (tag polyprune.model_id), else from the run's own artifacts, as records
    made before logged models keep them); None when neither has it."""
    if not has_file(cl, run_id, tags, path):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    model_id = tags.get(MODEL_ID)
    if model_id and holds(model_files(cl, model_id), path):
        location = cl.get_logged_model(model_id).artifact_location
        return Path(artifact_repo(location, cl.tracking_uri).download_artifacts(path, str(dest)))
    return Path(cl.download_artifacts(run_id, path, str(dest)))


def artifact_repo(location: str, tracking_uri: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(location, tracking_uri=tracking_uri)
