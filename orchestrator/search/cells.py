"""A search's cells: THE function from an Optuna trial to its cell (the trials' stage asks with it,
the confirmation rebuilds its candidates with it, benchmarks/search_efficiency.py prunes with it),
a baseline's cell, a cell on another calibration seed or evaluation, what each of them evaluates
(a trial: valid, and test only with `test_every_trial`; a baseline and the confirmation's test seeds:
valid, then test; a held-out cell: test only) and what they fix (the file's hyperparameters).

A trial's cell is a sweep cell's key (`engine.cells.prune_cell`), so the worker runs it unchanged and
its id says whether it already ran.
"""

from __future__ import annotations

from typing import Any

from tasks.errors import UserError

from ..engine.cells import Cell, prune_cell, prune_spec


def trial_cell(cfg, space, trial, n_blocks: int | None = None, ev: dict[str, Any] | None = None) -> Cell:
    """The cell of `trial`: an asked one (its parameters are sampled here, by the space) or a finished
    one (an Optuna `FrozenTrial`: rebuilt from its parameters, exactly the cell it ran). `n_blocks`:
    the model's decoder blocks, for a space with a per-block profile (`n_blocks(cfg)`); `ev`: the
    evaluation (default: the trials', `trial_evaluation`). A configuration the engine refuses
    raises UserError."""
    from optuna.trial import FixedTrial, FrozenTrial

    from search_spaces.space import PROFILE, sample
    from tasks.api import check_spec
    from tasks.data.langs import canonical_mix
    from tasks.pruning.sparsity import parse_sparsity

    from ..config import run_options
    langs = list(cfg.calibration.languages)
    if isinstance(trial, FrozenTrial):
        trial = FixedTrial(trial.params, trial.number)
    point = sample(trial, space, langs, parse_sparsity(cfg.sparsity).fraction, n_blocks)
    kind = point.schedule or cfg.schedule
    schedule = point.profile if kind == PROFILE else kind
    hp = {**fixed_hp(cfg, space, kind), **point.hp}
    spec = check_spec(trial_spec(cfg, canonical_mix(point.mix or uniform(langs)), schedule, hp))
    return prune_cell(cfg.model, spec, cfg.dtype, trial_evaluation(cfg) if ev is None else ev, run_options(cfg))


def baseline_cell(cfg, space, baseline, ev: dict[str, Any] | None = None) -> Cell:
    """A baseline's cell (`baselines.Baseline`) at the search's seed, on valid and then test (`full_evaluation`):
    few cells, and the summary quotes their test numbers."""
    from tasks.api import check_spec

    from ..config import run_options

    spec = check_spec(baseline_spec(cfg, space, baseline))
    return prune_cell(cfg.model, spec, cfg.dtype, full_evaluation(cfg) if ev is None else ev, run_options(cfg))


def reseeded(cell: Cell, seed: int) -> Cell:
    """`cell` with another calibration seed (a fresh draw; everything else unchanged: a new cell id)."""
    return varied(cell, seed=seed)


def varied(cell: Cell, **key) -> Cell:
    """`cell` with some fields of its key changed (a new cell id); the options of its own run left behind."""
    run = {k: v for k, v in cell.run.items() if k not in ("artifacts_to", "upload_delay_s", "report")}
    return Cell(cell.kind, {**cell.key, **key}, run, cell.where)


def uniform(langs: list[str]) -> dict[str, float]:
    return {lang: 1 / len(langs) for lang in langs}


def n_blocks(cfg) -> int:
    """Decoder blocks of the model, from its config alone (the driver never loads weights)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise UserError("model", f"cannot read the config of {cfg.model!r}: {str(e).splitlines()[0]}") from None
    conf = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(conf, name, None), int):
            return getattr(conf, name)
    raise UserError("model", f"cannot tell the number of blocks of {cfg.model!r} from its config (needed for a per-block profile)")


def evaluation(cfg) -> dict[str, Any]:
    """The resolved evaluation set, in the sweep's cell form (default: ppl in the calibration languages)."""
    from ..config import resolve_evaluation

    return resolve_evaluation(cfg.evaluation, cfg.calibration, list(cfg.calibration.languages))


def trial_evaluation(cfg) -> dict[str, Any]:
    """What a trial's cell evaluates: `valid` only (objectives and constraints: all the sampler sees);
    with `test_every_trial`, also the test pass (`full_evaluation`). Test is otherwise measured
    where the search reports it: the baselines, the confirmation's test seeds, the held-out stage."""
    ev = full_evaluation(cfg)
    return ev if cfg.test_every_trial else {**ev, "test": None}


def held_out_evaluation(cfg) -> dict[str, Any] | None:
    """The test pass alone (a held-out cell: its metrics named `test.*`, as a trial's test pass
    logs them); None when there is nothing to measure on test (an lm-eval objective without ppl)."""
    test = full_evaluation(cfg)["test"]
    return {"ppl": None, "lm_eval": None, "test": test} if test else None


def full_evaluation(cfg) -> dict[str, Any]:
    """Perplexity on `valid` (what objectives read), then the same on `test` as `test.*` (logged,
    never told to the sampler). lm-eval has no split of ours: it runs once, in the test pass,
    unless an objective or constraint reads it."""
    ev = evaluation(cfg)
    tuned = any(m.startswith("lmeval.") for m in [o.metric for o in cfg.objectives] + [c.metric for c in cfg.constraints])
    ppl = ev["ppl"]
    test = {"ppl": {**ppl, "split": "test"} if ppl else None, "lm_eval": None if tuned else ev["lm_eval"]}
    return {"ppl": {**ppl, "split": "valid"} if ppl else None, "lm_eval": ev["lm_eval"] if tuned else None,
            "test": test if test["ppl"] or test["lm_eval"] else None}


def trial_spec(cfg, calib: str, schedule, hp: dict[str, Any]):
    """A trial's `PruneSpec` (unchecked): what the file fixes plus the trial's calibration, schedule and hp."""
    return prune_spec(cfg, cfg.model, cfg.method, cfg.sparsity, calib, cfg.seed, schedule, hp)


def searches_schedule(space) -> bool:
    return space.searches("schedule") or bool(space.profile_points)


def fixed_hp(cfg, space, schedule_kind: str) -> dict[str, Any]:
    """The file's fixed `hp` that apply to a trial: not searched by the space and, when the
    space picks the schedule, only the method's and the trial's schedule's (the engine
    rejects an OWL setting on a CWL trial, or any setting on a per-block list). When the
    file fixes the schedule, every key goes to the engine, which rejects strays."""
    from tasks.pruning import METHODS, SCHEDULES
    from tasks.pruning.base import hp_names

    hp = {k: v for k, v in cfg.hp.items() if not space.searches(k)}
    if not searches_schedule(space):
        return hp
    keep = set(hp_names(METHODS.get(cfg.method, "method").Params))
    every = keep | {n for s in SCHEDULES.names() for n in hp_names(SCHEDULES.get(s).Params)}
    unknown = [k for k in hp if k not in every]
    if unknown:
        raise UserError("hp", f"unknown hyperparameter {unknown[0]!r} for method {cfg.method} or any schedule")
    if schedule_kind in SCHEDULES.names():
        keep |= set(hp_names(SCHEDULES.get(schedule_kind).Params))
    return {k: v for k, v in hp.items() if k in keep}


def baseline_spec(cfg, space, b):
    """A baseline's `PruneSpec` (unchecked). A baseline of the search's own method keeps the file's fixed
    hyperparameters of that method (what every trial has); any other runs at its method's defaults."""
    from tasks.data.langs import canonical_mix
    from tasks.pruning import METHODS
    from tasks.pruning.base import hp_names

    calib = b.calib or canonical_mix(uniform(list(cfg.calibration.languages)))
    hp = {}
    if b.method == cfg.method:
        own = set(hp_names(METHODS.get(b.method, "method").Params))
        hp = {k: v for k, v in fixed_hp(cfg, space, b.schedule).items() if k in own}
    return prune_spec(cfg, cfg.model, b.method, cfg.sparsity, calib, cfg.seed, b.schedule, {**hp, **b.hp})
