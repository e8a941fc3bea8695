"""A search's two rungs (docs/search.md, "Screening and promotion"): the `fidelity:` key, a trial's
screen cell, and the promotion rule. Plain functions of configs and numbers (no Ray, MLflow or
Optuna), so the trials' stage and `benchmarks/search_efficiency.py` share them.

Rung 0, the screen: the trial's masks formed from the dense model's per-language statistics,
computed once and cached on disk (`tasks.api.prune_from_cache`), and its objective measured on the
first `windows` valid windows of each evaluation language. Rung 1, full fidelity: the trial's own
cell, unchanged (the exact sequential prune, every valid window). A screened trial is promoted when
its screen value is among the best `promote` fraction of every screen value the study holds so far,
itself included (asynchronous successive halving, as ASHA promotes: no trial waits for a batch).
Optuna hears the screen value as the trial's intermediate value at step 0; a promoted trial is then
told its full-fidelity values, any other is told PRUNED. So only full-fidelity trials are COMPLETE:
only they can be a best trial or a confirmation candidate.

The default screen (8 windows, cached statistics) is the one `benchmarks/search_fidelity.py` found
to rank 100 random `mwanda_full` configurations as the full prune does (Kendall tau 0.78, recall of
the full top 10% in the screen's top 20%: 0.9; the gate is 0.7 and 0.9). The default fraction, 0.1,
had the lowest mean regret at a third of plain TPE's compute in `benchmarks/search_efficiency.py`
(intervals overlapping 0.25's) and the cheapest trials: 0.25 and 0.5 promoted more trials for no
better pick. Even 0.1 runs about a third of the trials at full fidelity, most likely because a
screen is judged on arrival against the few seen so far and TPE's later proposals are often among the
best (not measured apart).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, StrictInt

from tasks.errors import UserError

from ..config import Strict

DEFAULTS = {"windows": 8, "promote": 0.1}  # chosen from benchmarks/search_efficiency.py (docs/search.md)
FORM = "true, false, or {windows: K (valid windows per language at the screen), promote: F (0 < F <= 1)}"
SCREEN = "screen"  # the screen runs' polyprune.kind and the rung named on trials and runs
FULL = "full"


class FidelityConfig(Strict):
    windows: StrictInt = Field(DEFAULTS["windows"], gt=0)  # valid windows per evaluation language at the screen
    promote: float = Field(DEFAULTS["promote"], gt=0, le=1)  # the fraction of screened trials run at full fidelity


def resolve(cfg) -> None:
    """`cfg.fidelity` as a `FidelityConfig`, or None (`fidelity: false`, the default: every trial at full fidelity)."""
    from ..config import switch

    cfg.fidelity = switch(cfg.fidelity, FidelityConfig, "fidelity", FORM)


def check(cfg) -> None:
    """What a screened search cannot do, said before anything runs."""
    from .sampling import prunes

    if cfg.fidelity is None:
        return
    if len(cfg.objectives) > 1:
        raise UserError("fidelity", "promotion ranks one objective; give one objective or leave fidelity out")
    if cfg.constraints:
        raise UserError("fidelity", "a screened search takes no constraints yet (a screen's values are not the "
                                    "trial's); leave constraints or fidelity out")
    if prunes(cfg.pruner):
        raise UserError("fidelity", "the screen is the search's early stop; leave pruner out (or fidelity)")
    if not cfg.objectives[0].metric.startswith("ppl."):
        raise UserError("fidelity", f"the screen measures perplexity; objective {cfg.objectives[0].metric!r} is not one")


def served(method: str) -> bool:
    """Does `method` prune from cached statistics? (SparseGPT-family methods run every trial at full fidelity.)"""
    from tasks.pruning import METHODS
    from tasks.pruning.screen import check_served

    cls = METHODS.get(method, "method")
    try:
        check_served(cls(cls.Params()), method)
    except UserError:
        return False
    return True


def screen_key(key: dict[str, Any], windows: int) -> dict[str, Any]:
    """The screen cell's key from a trial's full-fidelity one: the same prune from cached dense statistics,
    evaluated on valid only, on each language's first `windows` windows (fewer when the split has fewer)."""
    ppl = key["eval"]["ppl"]
    n = windows if ppl.get("nsamples") is None else min(windows, ppl["nsamples"])
    ev = {"ppl": {**ppl, "nsamples": n, "split": "valid"}, "lm_eval": None, "test": None}
    return {**key, "eval": ev, "fidelity": {"statistics": "dense-cache", "windows": windows}}


def promoted(value: float, screened: list[float], fraction: float, minimize: bool = True) -> bool:
    """Is a screen `value` among the best `fraction` of `screened` (every screen value so far, itself
    included)? The best ceil(fraction * n) are promoted; a tie with the last promoted value promotes."""
    values = sorted(v for v in screened if math.isfinite(v))
    if not math.isfinite(value) or not values:
        return False
    k = max(1, math.ceil(fraction * len(values) - 1e-9))
    cut = values[k - 1] if minimize else values[-k]
    return value <= cut if minimize else value >= cut
