"""Sweep files (SPEC "Sweep and search files"): load, validate, expand into cells.

Everything is checked before anything starts: the YAML schema (unknown keys are
errors), every path, and every cell through `tasks.api.check_spec`, so a typo in
cell 300 of 324 stops the sweep before cell 1 runs. Errors are `UserError`s whose
field is the sweep-file path of the offending value (`sparsities[1]`, `methods[2].hp`).

A cell is everything that determines one result: the canonical prune spec plus
the evaluation set. Its id is a hash of that dict, so it is the same on every
machine and every rerun, and changes whenever the result could change.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from tasks.errors import UserError

NAMED_SCHEDULES = ("uniform", "owl", "cwl")
HUB_SOURCES = ("builtin", "mc4", "culturax", "wikipedia", "flores")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    name: str
    hp: dict[str, Any] = Field(default_factory=dict)


class CalibrationConfig(_Strict):
    languages: list[str] = Field(min_length=1)  # one cell value each: "en" or a mix "en=0.5,sw=0.5"
    data: str = "builtin"
    nsamples: int = Field(128, gt=0)
    seqlen: int | None = Field(None, gt=0)  # None: min(2048, the model's positions)
    batch_size: int = Field(8, gt=0)  # forward batch; does not change the result, so not in the cell id


class PplConfig(_Strict):
    languages: list[str] = Field(min_length=1)
    data: str | None = None  # default: calibration.data (its held-out split)
    nsamples: int | None = Field(None, gt=0)  # windows per language; None: all held-out text
    seqlen: int | None = Field(None, gt=0)  # default: calibration.seqlen
    batch_size: int = Field(8, gt=0)


class LmEvalConfig(_Strict):
    tasks: list[str] = Field(min_length=1)
    num_fewshot: int = Field(0, ge=0)
    limit: float | None = Field(None, gt=0)  # examples per task (int) or a fraction (< 1)
    batch_size: int = Field(8, gt=0)
    include_paths: list[str] = Field(default_factory=list)  # folders of custom lm-eval task YAMLs


class EvaluationConfig(_Strict):
    ppl: PplConfig | None = None
    lm_eval: LmEvalConfig | None = None


class ResourcesConfig(_Strict):
    gpus_per_cell: float = Field(1, gt=0)  # per worker actor when the cluster has GPUs
    cpu_workers: int = Field(1, gt=0)  # worker actors when it has none
    cpus_per_worker: int | None = Field(None, gt=0)  # default: the cluster's CPUs / cpu_workers
    max_in_flight: int | None = Field(None, gt=0)  # default: 2 per worker (one running, one queued)
    max_retries: int = Field(2, ge=0)  # re-runs of a cell whose worker or node died


class SweepConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[\w][\w.\- ]*$")  # letters, digits, _ . - and spaces
    models: list[str] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    sparsities: list[str] = Field(min_length=1)
    calibration: CalibrationConfig
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    schedule: str = "uniform"
    evaluation: EvaluationConfig | None = None  # default: perplexity in every calibration language
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking_uri: str | None = None  # default: sqlite:///mlflow.db next to the sweep file
    save_model: bool = False  # log the full pruned model as an artifact (large)
    dtype: str = "auto"
    trust_remote_code: bool = False

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, v):
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @field_validator("sparsities", mode="before")
    @classmethod
    def _sparsity_text(cls, v):
        # YAML gives 0.5 as a float and 2:4 as a string; keep both as text, parsed by the engine.
        if not isinstance(v, list):
            return v
        return [str(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else s for s in v]


@dataclass
class Cell:
    """One unit of work. `key` is what the id hashes; the rest only says how to run it."""

    kind: str  # "prune" | "baseline" (the dense model, sparsity 0)
    key: dict[str, Any]
    run: dict[str, Any]  # batch sizes, trust_remote_code: do not change the result
    where: dict[str, str] = field(default_factory=dict)  # sweep-file paths of the values, for messages
    cell_id: str = ""

    def __post_init__(self):
        self.cell_id = cell_id(self.key)

    @property
    def model(self) -> str:
        return self.key["model"]

    def label(self) -> str:
        k = self.key
        if self.kind == "baseline":
            return f"{Path(k['model']).name} dense"
        return f"{Path(k['model']).name} {k['method']} {k['sparsity']} {k['calib']} seed={k['seed']}"


def cell_id(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def read_mapping(path: Path, keys: str) -> dict:
    """The top-level mapping of a YAML file (safe_load), or one UserError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError("FILE", f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError("FILE", f"{str(path)!r} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise UserError("FILE", f"{str(path)!r} must be a mapping of keys ({keys}, ...)")
    return raw


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    """Parse and schema-check a sweep file; resolve its relative paths against its folder."""
    path = Path(path)
    raw = read_mapping(path, "name, models, methods")
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise _user_error(e) from None
    return _resolve_paths(cfg, Path(os.path.abspath(path)).parent)


def _user_error(e: ValidationError) -> UserError:
    err = e.errors()[0]
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(loc[:-1]))
        return UserError(_dotted(loc), f"unknown key; allowed here: {allowed}")
    if err["type"] == "missing":
        return UserError(_dotted(loc), "required")
    if err["type"] == "too_short":
        return UserError(_dotted(loc), "must not be empty")
    got = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
    return UserError(_dotted(loc), f"{err['msg'][0].lower()}{err['msg'][1:]}{got}")


def _dotted(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "FILE"


def _fields_at(loc: list) -> list[str]:
    """Field names of the model that `loc` points into (for "allowed here")."""
    model: Any = SweepConfig
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields[part].annotation
        model = next((a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _flatten(ann) -> list:
    args = typing.get_args(ann)
    return [x for a in args for x in _flatten(a)] if args else [ann]


def _local(value: str, base: Path, loose: bool) -> str:
    """Resolve a value that may be a path against the sweep file's folder.

    Existing paths resolve; so do path-looking values (./x, ../x, /x, ~/x, or with
    a slash when `loose`), so that a missing folder is reported as missing rather
    than taken for a hub name. Everything else (hub ids, named sources) is kept."""
    p = Path(os.path.expanduser(value))
    full = p if p.is_absolute() else base / p
    if full.exists() or value.startswith((".", "/", "~")) or (loose and "/" in value):
        return os.path.abspath(full)  # abspath, not resolve: keep the names of linked folders
    return value


def _resolve_paths(cfg: SweepConfig, base: Path) -> SweepConfig:
    # Models: a hub id has one slash (org/name), as tasks.models.load_model decides.
    cfg.models = [_local(m, base, loose=m.count("/") > 1) for m in cfg.models]
    if cfg.calibration.data not in HUB_SOURCES:
        cfg.calibration.data = _local(cfg.calibration.data, base, loose=True)
    ev = cfg.evaluation
    if ev and ev.ppl and ev.ppl.data and ev.ppl.data not in HUB_SOURCES:
        ev.ppl.data = _local(ev.ppl.data, base, loose=True)
    if ev and ev.lm_eval:
        ev.lm_eval.include_paths = [_local(p, base, loose=True) for p in ev.lm_eval.include_paths]
    if cfg.schedule not in NAMED_SCHEDULES:
        cfg.schedule = _local(cfg.schedule, base, loose=True)
    if cfg.tracking_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
        cfg.tracking_uri = resolve_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], Path.cwd())
    else:
        cfg.tracking_uri = resolve_tracking_uri(cfg.tracking_uri, base)
    return cfg


def resolve_tracking_uri(uri: str | None, base: Path) -> str:
    """sqlite and plain-file stores relative to `base` become absolute: Ray workers and
    `polyprune status` run from other folders."""
    if not uri:
        return f"sqlite:///{os.path.abspath(base / 'mlflow.db')}"
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return uri if rest.startswith("/") or rest == ":memory:" else f"sqlite:///{os.path.abspath(base / rest)}"
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return os.path.abspath(base / os.path.expanduser(uri))
    return uri


# ---------------------------------------------------------------- cells


def expand(cfg: SweepConfig) -> list[Cell]:
    """All cells, validated: per model its dense baseline, then methods x sparsities x languages x seeds."""
    from tasks.api import PruneSpec, check_spec  # heavy (torch); only once a file has parsed

    ev = _evaluation(cfg)
    _check_models(cfg)
    _check_evaluation(cfg, ev)
    checked: dict[str, Any] = {}  # check_spec does not depend on the model: once per spec
    cells: list[Cell] = []
    for mi, model in enumerate(cfg.models):
        cells.append(Cell("baseline", {"kind": "baseline", "model": model, "dtype": cfg.dtype, "eval": ev},
                          _run_opts(cfg), {"model": f"models[{mi}]"}))
        for ki, m in enumerate(cfg.methods):
            for si, sparsity in enumerate(cfg.sparsities):
                where = {"model": f"models[{mi}]", "method": f"methods[{ki}]", "sparsity": f"sparsities[{si}]"}
                if _is_zero(sparsity):
                    raise UserError(where["sparsity"], "0 is the dense baseline, evaluated once per model "
                                                       "automatically; give fractions in (0, 1) or N:M")
                for li, calib in enumerate(cfg.calibration.languages):
                    for di, seed in enumerate(cfg.seeds):
                        where = {**where, "calib": f"calibration.languages[{li}]", "seed": f"seeds[{di}]"}
                        raw = PruneSpec(model=model, method=m.name, sparsity=sparsity, calib=calib,
                                        data=cfg.calibration.data, nsamples=cfg.calibration.nsamples,
                                        seqlen=cfg.calibration.seqlen, seed=seed, schedule=cfg.schedule, hp=dict(m.hp))
                        memo = json.dumps({**raw.to_dict(), "model": ""}, sort_keys=True, default=str)
                        if memo not in checked:
                            try:
                                checked[memo] = check_spec(raw)
                            except UserError as e:
                                raise UserError(_where_of(e.field, where, m), e.message) from None
                        spec = checked[memo]
                        key = {"kind": "prune", "model": model, "method": spec.method, "sparsity": spec.sparsity,
                               "calib": spec.calib, "data": spec.data, "nsamples": spec.nsamples,
                               "seqlen": spec.seqlen, "seed": spec.seed, "schedule": spec.schedule,
                               "hp": spec.hp, "dtype": cfg.dtype, "eval": ev}
                        cells.append(Cell("prune", key, _run_opts(cfg), where))
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            a, b = seen[c.cell_id].where, c.where
            k = next((k for k in b if a.get(k) != b[k]), None)
            raise UserError(b[k] if k else "FILE", f"gives the same cell as {a[k] if k else 'another entry'} "
                                                   f"after canonicalisation ({c.label()}); remove the duplicate")
        seen[c.cell_id] = c
    return cells


def _is_zero(s: str) -> bool:
    try:
        return float(s) == 0
    except ValueError:
        return False


def _where_of(spec_field: str, where: dict[str, str], m: MethodEntry) -> str:
    """Map a PruneSpec field in an engine error to the sweep-file path of its value."""
    mapping = {"method": where["method"] + ".name", "hp": where["method"] + ".hp", "sparsity": where["sparsity"],
               "calib": where["calib"], "seed": where["seed"], "data": "calibration.data",
               "nsamples": "calibration.nsamples", "seqlen": "calibration.seqlen", "schedule": "schedule",
               "batch_size": "calibration.batch_size", "model": where["model"]}
    return mapping.get(spec_field, spec_field)


def _run_opts(cfg: SweepConfig) -> dict[str, Any]:
    ev = cfg.evaluation
    return {"batch_size": cfg.calibration.batch_size, "trust_remote_code": cfg.trust_remote_code,
            "save_model": cfg.save_model,
            "ppl_batch_size": ev.ppl.batch_size if ev and ev.ppl else 8,
            "lm_eval_batch_size": ev.lm_eval.batch_size if ev and ev.lm_eval else 8}


def _evaluation(cfg: SweepConfig) -> dict[str, Any]:
    """The resolved evaluation set (part of every cell id)."""
    from tasks.data.langs import parse_mix

    # default: perplexity in every language the sweep calibrates on
    langs = sorted({l for spec in cfg.calibration.languages for l in _mix_or_raise(parse_mix, spec)})
    return resolve_evaluation(cfg.evaluation, cfg.calibration, langs)


def resolve_evaluation(ev: EvaluationConfig | None, calibration: CalibrationConfig, default_langs: list[str]) -> dict[str, Any]:
    """An evaluation section in the plain form cells carry (worker.CellRunner reads it); sweeps and searches share it."""
    ev = ev or EvaluationConfig(ppl=PplConfig(languages=list(default_langs)))
    if ev.ppl is None and ev.lm_eval is None:
        raise UserError("evaluation", "give ppl and/or lm_eval (or leave evaluation out for ppl in the calibration languages)")
    out: dict[str, Any] = {"ppl": None, "lm_eval": None}
    if ev.ppl:
        out["ppl"] = {"languages": list(ev.ppl.languages), "data": ev.ppl.data or calibration.data,
                      "nsamples": ev.ppl.nsamples, "seqlen": ev.ppl.seqlen or calibration.seqlen}
    if ev.lm_eval:
        limit = ev.lm_eval.limit
        out["lm_eval"] = {"tasks": list(ev.lm_eval.tasks), "num_fewshot": ev.lm_eval.num_fewshot,
                          "limit": int(limit) if limit is not None and limit >= 1 else limit,
                          "include_paths": list(ev.lm_eval.include_paths)}
    return out


def _mix_or_raise(parse_mix, spec: str):
    try:
        return parse_mix(spec)
    except UserError as e:
        raise UserError("calibration.languages", e.message) from None


def _check_models(cfg: SweepConfig) -> None:
    for i, m in enumerate(cfg.models):
        if os.path.isabs(m):  # resolved local folder (hub ids stay relative)
            if not os.path.isdir(m):
                raise UserError(f"models[{i}]", f"folder {m!r} does not exist")
            if not os.access(m, os.R_OK | os.X_OK) or not os.path.isfile(os.path.join(m, "config.json")):
                raise UserError(f"models[{i}]", f"{m!r} is not a readable model folder (needs config.json from save_pretrained)")


def _check_evaluation(cfg: SweepConfig, ev: dict[str, Any]) -> None:
    from tasks.data.sources import get_source

    if ev["ppl"]:
        where = "evaluation.ppl.data" if cfg.evaluation and cfg.evaluation.ppl and cfg.evaluation.ppl.data else "calibration.data"
        try:
            source = get_source(ev["ppl"]["data"])
        except UserError as e:
            raise UserError(where, e.message) from None
        for i, lang in enumerate(ev["ppl"]["languages"]):
            try:
                source.check_language(lang, "ppl")
            except UserError as e:
                raise UserError(f"evaluation.ppl.languages[{i}]", e.message) from None
    if ev["lm_eval"]:
        from tasks.evaluation.lmeval import check_args, resolve_tasks, task_manager

        le = ev["lm_eval"]
        try:
            names = check_args(le["tasks"], num_fewshot=le["num_fewshot"], limit=le["limit"],
                               batch_size=cfg.evaluation.lm_eval.batch_size, include_paths=le["include_paths"])
            resolve_tasks(names, task_manager(le["include_paths"]))  # indexes lm-eval's tasks: ~15 s, once
        except UserError as e:
            field_ = {"tasks": "tasks", "num_fewshot": "num_fewshot", "limit": "limit", "batch_size": "batch_size"}
            raise UserError(f"evaluation.lm_eval.{field_.get(e.field, e.field)}", e.message) from None
