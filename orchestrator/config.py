"""What sweep files and search files share (docs/sweeps.md, docs/search.md): the sections both have, the error
format of a bad file (one `UserError` whose field is the value's path: `methods[2].hp`), THE path resolver, the
evaluation set in the plain form cells carry, the checks of models, positions and text. sweep/file.py and
search/file.py build on this module; a check both kinds of file need goes here, once."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from tasks.errors import UserError


class Strict(BaseModel):
    """Unknown keys are errors, in every section of every file."""

    model_config = ConfigDict(extra="forbid")


class CalibrationConfig(Strict):
    languages: list[str] = Field(min_length=1)  # one cell value each: "en" or a mix "en=0.5,sw=0.5"
    data: str = "builtin"
    nsamples: StrictInt = Field(128, gt=0)  # strict: a YAML `true` is not 1
    seqlen: StrictInt | None = Field(None, gt=0)  # None: min(2048, the model's positions)
    batch_size: StrictInt = Field(8, gt=0)  # forward batch; does not change the result, so not in the cell id
    # windows per language of a mix (docs/mwanda.md#allocation); pooling methods (wanda, ...) keep proportional
    allocation: Literal["proportional", "equal"] = "proportional"


class PplConfig(Strict):
    languages: list[str] = Field(min_length=1)
    data: str | None = None  # default: calibration.data (its held-out split)
    nsamples: StrictInt | None = Field(None, gt=0)  # windows per language; None: all held-out text
    seqlen: StrictInt | None = Field(None, gt=0)  # default: calibration.seqlen
    batch_size: StrictInt = Field(8, gt=0)
    split: Literal["valid", "test"] = "test"  # sweeps quote test; a search tunes on valid whatever this says


class LmEvalConfig(Strict):
    tasks: list[str] = Field(min_length=1)
    num_fewshot: StrictInt = Field(0, ge=0)
    limit: float | None = Field(None, gt=0, allow_inf_nan=False)  # examples per task (int) or a fraction (< 1)
    batch_size: StrictInt = Field(8, gt=0)
    include_paths: list[str] = Field(default_factory=list)  # folders of custom lm-eval task YAMLs


class EvaluationConfig(Strict):
    ppl: PplConfig | None = None
    lm_eval: LmEvalConfig | None = None


class ResourcesConfig(Strict):
    gpus_per_cell: float = Field(1, ge=0.01, allow_inf_nan=False)  # per worker actor with GPUs; at most 100 share one
    cpu_workers: StrictInt = Field(1, gt=0)  # worker actors when it has none
    cpus_per_worker: StrictInt | None = Field(None, gt=0)  # default: the cluster's CPUs / cpu_workers
    max_in_flight: StrictInt | None = Field(None, gt=0)  # default: 2 per worker (one running, one queued)
    max_retries: StrictInt = Field(2, ge=0, le=100)  # re-runs of a cell whose worker died; bounded: a cell killing every worker ends


# ---------------------------------------------------------------- reading a file


def read_mapping(path: Path, keys: str) -> dict:
    """The top-level mapping of a YAML file (safe_load), or one UserError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError("FILE", f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]  # one line, whatever the error's shape
        raise UserError("FILE", f"{str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError("FILE", f"{str(path)!r} must be a mapping of keys ({keys}, ...)")
    return raw


def validate(model: type[BaseModel], raw: dict, under: str = "") -> Any:
    """`model.model_validate(raw)`; its first error as one UserError naming the value's path (under `under`)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = user_error(model, e)
        raise (UserError(f"{under}.{err.field}", err.message) if under else err) from None


def switch(raw: Any, model: type[BaseModel], field: str, form: str) -> Any:
    """A key that is true (`model`'s defaults), false (None: off) or a mapping of its fields (confirm:, fidelity:)."""
    if raw is not None and not isinstance(raw, (bool, dict)):
        raise UserError(field, f"allowed: {form}; got {raw!r}")
    return None if raw is None or raw is False else validate(model, {} if raw is True else raw, field)


def user_error(model: type[BaseModel], e: ValidationError) -> UserError:
    err = e.errors()[0]
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden":
        return UserError(dotted(loc), f"unknown key; allowed here: {', '.join(fields_at(model, loc[:-1]))}")
    if err["type"] == "missing":
        return UserError(dotted(loc), "required")
    if err["type"] == "too_short":
        return UserError(dotted(loc), "must not be empty")
    got = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
    return UserError(dotted(loc), f"{err['msg'][0].lower()}{err['msg'][1:]}{got}")


def dotted(loc: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "FILE"


def fields_at(model: Any, loc: list) -> list[str]:
    """Field names of the section that `loc` points into (for "allowed here")."""
    for part in (p for p in loc if not isinstance(p, int)):
        ann = model.model_fields[part].annotation
        model = next((a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _flatten(ann) -> list:
    args = typing.get_args(ann)
    return [x for a in args for x in _flatten(a)] if args else [ann]


# ---------------------------------------------------------------- paths


def local_path(value: str, base: Path, loose: bool) -> str:
    """Resolve a value that may be a path against the file's folder.

    Existing paths resolve; so do path-looking values (./x, ../x, /x, ~/x, or with
    a slash when `loose`), so that a missing folder is reported as missing rather
    than taken for a hub name. Everything else (hub ids, named sources) is kept."""
    p = Path(os.path.expanduser(value))
    full = p if p.is_absolute() else base / p
    if full.exists() or value.startswith((".", "/", "~")) or (loose and "/" in value):
        return os.path.abspath(full)  # abspath, not resolve: keep the names of linked folders
    return value


def model_path(model: str, base: Path) -> str:
    from tasks.models import resolve_alias

    # A hub id has one slash (org/name), as tasks.models.load_model decides. The alias `demo`
    # resolves here, so a cell's id names the exact demo model it ran on.
    resolved = resolve_alias(model)
    return resolved if resolved != model else local_path(model, base, loose=model.count("/") > 1)


def check_model(model: str, field: str) -> None:
    """A resolved local model folder (hub ids stay relative) must exist and hold a saved model with
    readable weights (their positions and text: `check_fit`)."""
    if not os.path.isabs(model):
        return
    if os.path.exists(model) and not os.path.isdir(model):
        raise UserError(field, f"{model!r} is a file; expected a model folder (saved with save_pretrained) or a hub id")
    if not os.path.isdir(model):
        raise UserError(field, f"folder {model!r} does not exist")
    if not os.access(model, os.R_OK | os.X_OK) or not os.path.isfile(os.path.join(model, "config.json")):
        raise UserError(field, f"{model!r} is not a readable model folder (needs config.json from save_pretrained)")
    from tasks.models import check_weight_files

    try:
        check_weight_files(Path(model))  # headers only: a truncated file fails here, not in every cell
    except UserError as e:
        raise UserError(field, e.message) from None


def resolve_paths(cfg: Any, base: Path) -> None:
    """THE resolver of the sections sweep and search files share: calibration data, evaluation
    data and lm-eval task folders, the schedule file, the MLflow store. A file's own path
    fields (its model(s), a search's storage) go through `model_path` / `local_path` in its loader."""
    from tasks.data.sources import named_source
    from tasks.pruning import SCHEDULES
    if not named_source(cfg.calibration.data):
        cfg.calibration.data = local_path(cfg.calibration.data, base, loose=True)
    ev = cfg.evaluation
    if ev and ev.ppl and ev.ppl.data and not named_source(ev.ppl.data):
        ev.ppl.data = local_path(ev.ppl.data, base, loose=True)
    if ev and ev.lm_eval:
        ev.lm_eval.include_paths = [local_path(p, base, loose=True) for p in ev.lm_eval.include_paths]
    if cfg.schedule not in SCHEDULES:
        cfg.schedule = local_path(cfg.schedule, base, loose=True)
    env = os.environ.get("MLFLOW_TRACKING_URI") if cfg.tracking_uri is None else None
    cfg.tracking_uri = resolve_tracking_uri(env, Path.cwd()) if env else resolve_tracking_uri(cfg.tracking_uri, base)


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


def default_tracking_uri(explicit: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd."""
    return resolve_tracking_uri(explicit or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db", Path.cwd())


def run_options(cfg: Any) -> dict[str, Any]:
    """How a file's cells run without changing their result (batch sizes, remote code, saving)."""
    ev = cfg.evaluation
    return {"batch_size": cfg.calibration.batch_size, "trust_remote_code": cfg.trust_remote_code, "save_model": cfg.save_model,
            "ppl_batch_size": ev.ppl.batch_size if ev and ev.ppl else 8,
            "lm_eval_batch_size": ev.lm_eval.batch_size if ev and ev.lm_eval else 8}


# ---------------------------------------------------------------- evaluation


def resolve_evaluation(ev: EvaluationConfig | None, calibration: CalibrationConfig, default_langs: list[str]) -> dict[str, Any]:
    """An evaluation section in the plain form cells carry (engine.worker.CellRunner reads it)."""
    ev = ev or EvaluationConfig(ppl=PplConfig(languages=list(default_langs)))
    if ev.ppl is None and ev.lm_eval is None:
        raise UserError("evaluation", "give ppl and/or lm_eval (or leave evaluation out for ppl in the calibration languages)")
    out: dict[str, Any] = {"ppl": None, "lm_eval": None}
    if ev.ppl:
        out["ppl"] = {"languages": list(ev.ppl.languages), "data": ev.ppl.data or calibration.data,
                      "nsamples": ev.ppl.nsamples, "seqlen": ev.ppl.seqlen or calibration.seqlen, "split": ev.ppl.split}
    if ev.lm_eval:
        limit = ev.lm_eval.limit
        out["lm_eval"] = {"tasks": list(ev.lm_eval.tasks), "num_fewshot": ev.lm_eval.num_fewshot,
                          "limit": int(limit) if limit is not None and limit >= 1 else limit,
                          "include_paths": list(ev.lm_eval.include_paths)}
    return out


def check_evaluation(cfg: Any, ev: dict[str, Any]) -> None:
    """Every evaluation language in its source and every lm-eval task known, before anything runs."""
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
            resolve_tasks(names, task_manager(le["include_paths"], names))  # indexed once per process (lmeval.task_manager)
        except UserError as e:
            raise UserError(f"evaluation.lm_eval.{e.field}", e.message) from None


def check_fit(cfg: Any, models: list[str], mixes: list[str], ev: dict[str, Any], splits: tuple[str, ...]) -> None:
    """The file's dtype loads; each local model takes its seqlens and its text serves them as `prune` and the
    cells read it (the engine's functions): nsamples x seqlen tokens per language, as many samples as any of `mixes`
    draws there (a search passes each language alone: the most a mix can put on one), and a ppl window per split."""
    from tasks.data.calibration import calibration_docs, eval_windows
    from tasks.data.langs import allocate, parse_mix
    from tasks.data.sources import HUB, get_source
    from tasks.models import DTYPES, config_positions, read_config
    from transformers import AutoTokenizer

    if cfg.dtype not in DTYPES:  # as load_model checks it in each cell
        raise UserError("dtype", f"{cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    streamed = set(HUB.names())  # hub corpora: checked by each cell as it streams them
    calib, ppl = cfg.calibration, ev["ppl"] if ev["ppl"] and ev["ppl"]["data"] not in streamed else None
    seqlens = {"calibration.seqlen": calib.seqlen}
    if ev["ppl"]:
        seqlens["evaluation.ppl.seqlen" if cfg.evaluation and cfg.evaluation.ppl.seqlen else "calibration.seqlen"] = ev["ppl"]["seqlen"]
    need: dict[str, int] = {}  # language -> the most samples any mix draws in it
    for mix in [] if calib.data in streamed else mixes:
        for a in {"proportional", calib.allocation}:  # pooling methods keep proportional (engine.cells.prune_spec)
            for lang, n in allocate(parse_mix(mix), calib.nsamples, a).items():  # a language left out gets 0: not sampled
                need[lang] = max(n, need.get(lang, 0))
    for model in [m for m in models if os.path.isabs(m)]:
        positions = config_positions(read_config(model, cfg.trust_remote_code))
        for where, seqlen in seqlens.items():
            if seqlen is not None and positions and seqlen > positions:
                raise UserError(where, f"{seqlen} is beyond the {positions} positions of model {model!r}")
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.trust_remote_code) if need or ppl else None
        default = min(2048, positions or 2048)  # seqlen None, as tasks.api.eval_seqlen
        for lang, n in ((lang, n) for lang, n in need.items() if n):
            try:
                calibration_docs(get_source(calib.data), tok, lang, n, calib.seqlen or default)
            except UserError as e:
                raise UserError(f"calibration.{e.field}", e.message) from None
        for i, lang in enumerate(ppl["languages"] if ppl else []):
            for split in splits:
                try:
                    eval_windows(get_source(ppl["data"]), tok, lang, ppl["seqlen"] or default, ppl["nsamples"], split)
                except UserError as e:
                    raise UserError(f"evaluation.ppl.languages[{i}]" if cfg.evaluation else "evaluation", e.message) from None
