"""A search file's `sampler:` and `pruner:` (docs/search.md): checked up front, built from Optuna's classes.

`sampler: {name: tpe | gp | cmaes | random | qmc | nsga2, ...arguments}` and
`pruner: {name: none | median | percentile | successive_halving | hyperband | wilcoxon | threshold,
...arguments}`; the arguments are the Optuna class's own keyword arguments, checked against its
signature, so a typo is one line naming the field and what is allowed. `seed` comes from the
file's `sampler_seed` (moved on with the study by `study.open_study`), never from here.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from tasks.errors import UserError

# name -> (Optuna class name, defaults polyprune sets, several objectives allowed)
SAMPLERS = {
    # constant_liar: trials in flight count as (pessimistic) results, so `parallel` proposals
    # do not pile onto one point. Today's sampler, the default.
    "tpe": ("TPESampler", {"constant_liar": True}, True),
    "gp": ("GPSampler", {}, True),
    "cmaes": ("CmaEsSampler", {}, False),
    "random": ("RandomSampler", {}, True),
    "qmc": ("QMCSampler", {}, True),
    "nsga2": ("NSGAIISampler", {}, True),
}
PRUNERS = {
    "none": ("NopPruner", {}),
    "median": ("MedianPruner", {}),
    "percentile": ("PercentilePruner", {}),
    "successive_halving": ("SuccessiveHalvingPruner", {}),
    "hyperband": ("HyperbandPruner", {}),
    # languages as instances: step i is the i-th evaluation language's valid perplexity
    "wilcoxon": ("WilcoxonPruner", {}),
    "threshold": ("ThresholdPruner", {}),
}
# Arguments that are objects or the driver's own (seed: sampler_seed; constraints: the file's constraints).
RESERVED = {"seed", "constraints_func", "independent_sampler", "source_trials", "mutation", "crossover",
            "elite_population_selection_strategy", "child_generation_strategy", "after_trial_strategy"}
DEFAULT_SAMPLER = {"name": "tpe"}
DEFAULT_PRUNER = {"name": "none"}


def check(sampler: dict[str, Any] | None, pruner: dict[str, Any] | None, objectives: list) -> None:
    """Raise UserError (one line) on an unknown name or argument, or a choice that cannot take
    several objectives or the search's objective."""
    s, p = dict(sampler or DEFAULT_SAMPLER), dict(pruner or DEFAULT_PRUNER)
    n_objectives = len(objectives)
    name = s.pop("name", None)
    if name not in SAMPLERS:
        raise UserError("sampler.name", f"{name!r} is not a sampler; allowed: {', '.join(SAMPLERS)}")
    cls_name, _, multi = SAMPLERS[name]
    if n_objectives > 1 and not multi:
        raise UserError("sampler.name", f"{name} optimizes one objective, this search has {n_objectives}; "
                                        f"use one of {', '.join(k for k, v in SAMPLERS.items() if v[2])}")
    check_arguments("sampler", cls_name, "samplers", s)
    name = p.pop("name", None)
    if name not in PRUNERS:
        raise UserError("pruner.name", f"{name!r} is not a pruner; allowed: {', '.join(PRUNERS)}")
    if n_objectives > 1 and name != "none":  # Optuna prunes single-objective studies only
        raise UserError("pruner.name", f"{name} prunes single-objective searches; this one has {n_objectives} "
                                       f"objectives: use none")
    # The steps are per-language valid perplexities (lower is better): they speak for a ppl objective only.
    if name != "none" and not (objectives[0].metric.startswith("ppl.") and objectives[0].direction == "minimize"):
        raise UserError("pruner.name", f"a pruner hears each language's valid perplexity; the objective "
                                       f"{objectives[0].metric} ({objectives[0].direction}) is not one: use none")
    check_arguments("pruner", PRUNERS[name][0], "pruners", p)


def check_arguments(field: str, cls_name: str, module: str, args: dict[str, Any]) -> None:
    import optuna

    cls = getattr(getattr(optuna, module), cls_name)
    signature = inspect.signature(cls)
    params = signature.parameters
    allowed = [k for k in params if k not in RESERVED]
    for k in args:
        if k not in allowed:
            raise UserError(f"{field}.{k}", f"not an argument of {cls_name}; allowed: {', '.join(allowed) or 'none'}"
                                            + (" (the seed is the file's sampler_seed)" if k == "seed" else ""))
    for k, v in args.items():  # a number where the default is one (YAML gives "1e-3" as text)
        d = params[k].default
        if isinstance(d, (int, float)) and (isinstance(v, bool) != isinstance(d, bool) or not isinstance(v, (int, float))):
            raise UserError(f"{field}.{k}", f"{cls_name} takes {type(d).__name__} here (default {d!r}), got {v!r}")
    try:
        signature.bind(**args)
        with warnings.catch_warnings():  # Optuna's "experimental" notes: said again when the study is made
            warnings.simplefilter("ignore")
            cls(**args)  # the class checks its values (a wrong type may only show when it is used)
    except (TypeError, ValueError) as e:
        raise UserError(field, f"{cls_name}: {str(e).splitlines()[0]}") from None


def prunes(pruner: dict[str, Any] | None) -> bool:
    """Does a (checked) `pruner:` stop trials, i.e. is it anything but the default `none`?"""
    return (pruner or DEFAULT_PRUNER)["name"] != "none"


def build_sampler(sampler: dict[str, Any] | None, seed: int | None):
    import optuna

    args = dict(sampler or DEFAULT_SAMPLER)
    cls_name, defaults, _ = SAMPLERS[args.pop("name")]
    return getattr(optuna.samplers, cls_name)(**{**defaults, **args, "seed": seed})


def build_pruner(pruner: dict[str, Any] | None):
    import optuna

    args = dict(pruner or DEFAULT_PRUNER)
    cls_name, defaults = PRUNERS[args.pop("name")]
    return getattr(optuna.pruners, cls_name)(**{**defaults, **args})


def metric_names(cfg) -> list[str]:
    """The study's objective names as optuna-dashboard shows them (the sampler sees valid)."""
    return [f"{o.metric} (valid)" for o in cfg.objectives]
