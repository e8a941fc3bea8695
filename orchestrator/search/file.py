"""Search files (docs/search.md): load and validate.

Everything is checked before a study or an MLflow record exists: the schema
(unknown keys are errors), paths (relative to the search file), the space and its
parameter names, every calibration and evaluation language, that each objective
and constraint names a metric the evaluation produces, and one representative
trial configuration through the engine's `check_spec`.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from tasks.errors import UserError

from ..config import (CalibrationConfig, EvaluationConfig, ResourcesConfig, Strict, check_evaluation, check_fit, check_model,
                      model_path, read_mapping, resolve_paths, validate)
from .cells import evaluation, fixed_hp, searches_schedule, trial_spec


class Objective(Strict):
    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


class Constraint(Strict):
    """Feasible when min <= metric <= max (Optuna: constraint value <= 0)."""

    metric: str
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _one_bound(self):
        if self.max is None and self.min is None:
            raise ValueError("give max and/or min")
        return self


class SearchConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[\w][\w.\- ]*$")  # MLflow experiment and Optuna study name
    model: str
    method: str = "mwanda"
    sparsity: str  # unstructured fraction: searched schedules and profiles need one
    calibration: CalibrationConfig  # languages: the codes a mix is searched over (plain codes, no mixes)
    seed: StrictInt = 0  # calibration sampling seed (the same for every trial: trials differ only by the space)
    schedule: str = "uniform"  # used when the space does not search the schedule
    hp: dict[str, Any] = Field(default_factory=dict)  # fixed hyperparameters the space does not search
    evaluation: EvaluationConfig | None = None  # default: perplexity in every calibration language
    space: str  # a file of search_spaces/ by name, or a path
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    n_trials: StrictInt = Field(20, gt=0)  # the study's total; `--n-trials N` adds N more
    parallel: StrictInt = Field(2, gt=0)  # trials in flight on Ray (at most n_trials; fewer when the cluster is smaller)
    # run first, as the literature ran them: true (uniform mix + the target language alone), false, or a list;
    # plus the search's own method alone (search.baselines)
    baselines: bool | list[Any] = True
    # the top trials re-run on selection seeds, the winner and baselines on test seeds: true, false or
    # {top, selection_seeds, test_seeds, level} (search.confirm)
    confirm: Any = True
    # trials screened at low fidelity, the best fraction promoted to the exact prune: true, false or
    # {windows, promote} (search.fidelity; default false: every trial at full fidelity)
    fidelity: Any = False
    # false: a trial's cell measures valid only, and test is measured where the search reports it (the
    # baselines, the best trials and the confirmed winner by the held-out stage, the confirmation's test
    # seeds); true: every trial measures valid then test, as searches did before (search.held_out)
    test_every_trial: bool = False
    sampler_seed: StrictInt | None = None  # the sampler's seed (reproducible proposals for a fixed completion order)
    sampler: dict[str, Any] | None = None  # {name: tpe (default) | gp | cmaes | random | qmc | nsga2, ...} (search.sampling)
    pruner: dict[str, Any] | None = None  # {name: none (default) | wilcoxon | median | ..., ...} (search.sampling)
    storage: str | None = None  # default: sqlite:///optuna.db next to the search file
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)  # cpu_workers default: parallel
    tracking_uri: str | None = None  # default: sqlite:///mlflow.db next to the search file
    save_model: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    # registered model the best trial goes to when the search ends (as `polyprune register` picks it)
    # (the key `register`: pydantic models already have a `register` attribute, ABCMeta's)
    register_as: str | None = Field(None, alias="register", min_length=1)

    @field_validator("baselines", mode="before")
    @classmethod
    def _baselines_form(cls, v):
        if not isinstance(v, (bool, list)):
            raise ValueError("true, false, or a list of uniform, target, {name: NAME, calib: MIX | {from: FILE}, method: M}")
        return v

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity_text(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def load_search(path: str | os.PathLike):
    """(config, space): parsed, paths resolved against the file's folder, everything checked."""
    path = Path(path)
    raw = read_mapping(path, "name, model, space, objectives")
    return parse_search(raw, Path(os.path.abspath(path)).parent)


def parse_search(raw: dict[str, Any], base: Path):
    """(config, space) from a search file's contents; relative paths are relative to `base`."""
    from . import baselines, confirm, fidelity
    from search_spaces.space import load_space

    cfg = validate(SearchConfig, raw)
    confirm.resolve(cfg)
    fidelity.resolve(cfg)
    cfg.model = model_path(cfg.model, base)
    resolve_paths(cfg, base)
    cfg.storage = resolve_storage(cfg.storage, base)
    baselines.parse(cfg, base)
    space = load_space(cfg.space, base)
    check(cfg, space)
    return cfg, space


def resolve_storage(uri: str | None, base: Path) -> str:
    """sqlite:///optuna.db beside the file by default; relative sqlite / journal paths become absolute."""
    if not uri:
        return f"sqlite:///{os.path.abspath(base / 'optuna.db')}"
    for scheme in ("sqlite:///", "journal:///"):
        if uri.startswith(scheme):
            rest = uri[len(scheme):]
            return uri if rest.startswith("/") else f"{scheme}{os.path.abspath(base / rest)}"
    if "://" not in uri:
        raise UserError("storage", f"{uri!r} is not a storage URI; use sqlite:///FILE, journal:///FILE or postgresql://...")
    return uri


# ---------------------------------------------------------------- semantic checks


def check(cfg: SearchConfig, space) -> None:
    from tasks.api import check_spec
    from tasks.data.langs import parse_mix
    from tasks.data.sources import get_source
    from tasks.pruning import METHODS, SCHEDULES
    from tasks.pruning.base import hp_names
    from tasks.pruning.sparsity import parse_sparsity

    from . import baselines, fidelity, sampling

    check_model(cfg.model, "model")
    sampling.check(cfg.sampler, cfg.pruner, cfg.objectives)
    fidelity.check(cfg)
    # More trials in flight than the study has is a typo (1000 for 10), never a plan: TPE would
    # propose every trial before seeing one result. A cluster smaller than `parallel` is fine:
    # trials wait for workers.
    if cfg.parallel > cfg.n_trials:
        raise UserError("parallel", f"{cfg.parallel} trials in flight is more than n_trials ({cfg.n_trials}, the study's "
                                    f"total); give at most {cfg.n_trials}")
    try:
        source = get_source(cfg.calibration.data)
    except UserError as e:
        raise UserError("calibration.data", e.message) from None
    langs = cfg.calibration.languages
    for i, lang in enumerate(langs):
        try:
            mix = parse_mix(lang, f"calibration.languages[{i}]")
        except UserError as e:
            raise UserError(f"calibration.languages[{i}]", e.message) from None
        if len(mix) != 1 or "=" in lang:
            raise UserError(f"calibration.languages[{i}]", f"a search mixes plain language codes; got the mix {lang!r}")
        try:
            source.check_language(lang, "calib")
        except UserError as e:
            raise UserError(f"calibration.languages[{i}]", e.message) from None
    if len(set(langs)) != len(langs):
        raise UserError("calibration.languages", "a language is listed twice")
    try:
        sparsity = parse_sparsity(cfg.sparsity)
    except UserError as e:
        raise UserError("sparsity", e.message) from None
    ev = evaluation(cfg)
    check_evaluation(cfg, ev)
    if cfg.evaluation and cfg.evaluation.ppl and "split" in cfg.evaluation.ppl.model_fields_set:
        raise UserError("evaluation.ppl.split", "a search's objectives read valid and its reported trials are measured on "
                                                "test; leave split out")
    names = [o.metric for o in cfg.objectives]
    for i, o in enumerate(cfg.objectives):
        if not produces(ev, o.metric):
            raise UserError(f"objectives[{i}].metric", f"{o.metric!r} is not produced by the evaluation; "
                                                       f"available: {', '.join(available(ev))}")
    if len(set(names)) != len(names):
        raise UserError("objectives", "an objective metric is listed twice")
    for i, c in enumerate(cfg.constraints):
        if not produces(ev, c.metric):
            raise UserError(f"constraints[{i}].metric", f"{c.metric!r} is not produced by the evaluation; "
                                                        f"available: {', '.join(available(ev))}")
    # The space's parameters must be hyperparameters of this method or of a schedule.
    method_cls = METHODS.get(cfg.method, "method")
    known = set(hp_names(method_cls.Params)) | {n for s in SCHEDULES.names() for n in hp_names(SCHEDULES.get(s).Params)}
    for p in space.params:
        if p.name != "schedule" and p.name not in known:
            raise UserError("space", f"{space.name} searches {p.name!r}, which is not a hyperparameter of method "
                                     f"{cfg.method} or of a schedule (known: {', '.join(sorted(known))})")
    if (space.searches("schedule") or space.profile_points) and sparsity.nm:
        raise UserError("sparsity", f"space {space.name} searches the layerwise schedule, which needs an unstructured "
                                    f"fraction, not {cfg.sparsity}")
    if space.mix and len(langs) < 2:
        raise UserError("calibration.languages", f"space {space.name} searches a mix: give at least 2 languages")
    # One representative trial through the engine: method, hp keys and types, schedule, nsamples...
    try:
        hp = fixed_hp(cfg, space, "uniform" if searches_schedule(space) else cfg.schedule)
        check_spec(trial_spec(cfg, ",".join(langs), "uniform" if searches_schedule(space) else cfg.schedule, hp))
    except UserError as e:
        field = {"hp": "hp", "schedule": "schedule", "method": "method", "nsamples": "calibration.nsamples",
                 "seqlen": "calibration.seqlen", "data": "calibration.data", "seed": "seed"}.get(e.field, e.field)
        raise UserError(field, e.message) from None

    chosen = baselines.resolve(cfg, baselines.target_language(cfg))
    baselines.check(cfg, space, chosen, source)
    # A searched mix may put all of nsamples on any one language: each alone is the worst case.
    # Trials are measured on valid (what the sampler sees); baselines and the reported trials also on test.
    check_fit(cfg, [cfg.model], [*langs, *(b.calib for b in chosen if b.calib)], ev, ("valid", "test"))


# ---------------------------------------------------------------- metrics

# Metrics every cell reports besides its evaluation (engine.worker.CellRunner).
ALWAYS = ("sparsity.actual", "time.prune_s", "time.eval_s", "time.cell_s", "time.calib_s", "time.load_s")


def produces(ev: dict[str, Any], metric: str) -> bool:
    """Does a cell with evaluation `ev` report `metric`?"""
    if metric in ALWAYS:
        return True
    if ev["ppl"] and metric in {f"ppl.{l}" for l in ev["ppl"]["languages"]} | {"ppl.mean"}:
        return True
    if ev["lm_eval"] and metric.startswith("lmeval."):
        # lmeval.<task>.<metric>[.<filter>]; task names may themselves hold dots rarely: match by prefix
        rest = metric[len("lmeval."):]
        return any(fnmatch.fnmatch(rest.split(".", 1)[0], t) or rest.startswith(t + ".") for t in ev["lm_eval"]["tasks"])
    return False


def available(ev: dict[str, Any]) -> list[str]:
    """The metric names `produces` accepts, for messages."""
    out = []
    if ev["ppl"]:
        out += [f"ppl.{l}" for l in ev["ppl"]["languages"]] + ["ppl.mean"]
    if ev["lm_eval"]:
        out += [f"lmeval.{t}.<metric>" for t in ev["lm_eval"]["tasks"]]
    return out + list(ALWAYS)
