"""The confirmation's rules (docs/search.md, "Confirmation"): the `confirm:` key, which trials
are confirmed, the winner and the verdict against each baseline. Plain functions of numbers:
no Ray, MLflow or Optuna, so they are tested on hand-made values.

The test: a paired t-test over the confirmation seeds on log test values of the first
objective (perplexity is a ratio scale: a log difference is a relative one). Seeds are the
unit because a seed is one calibration draw: the languages and windows evaluated after one
draw share it and are not independent replicates of the calibration choice. A signed-rank
test over n seeds cannot go below p = 2 / 2**n (0.25 with 3 seeds), so it could never say
"better"; a t-test can, when the per-seed differences agree.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, StrictInt

from tasks.errors import UserError

from ..config import Strict

FORM = "true, false, or {top: K, seeds: [S, ...] or N, level: L}"
POWER = 0.8  # the detectable difference is quoted at this power


class ConfirmConfig(Strict):
    top: StrictInt = Field(3, gt=0)  # the K best trials on valid, re-run
    seeds: list[StrictInt] | StrictInt = 3  # calibration seeds; N: the N seeds after the search's `seed`
    level: float = Field(0.05, gt=0, lt=0.5)  # the test's significance level


def resolve(cfg) -> None:
    """`cfg.confirm` as a `ConfirmConfig` with its seed list, or None (`confirm: false`)."""
    from ..config import validate

    raw = cfg.confirm
    if raw is False or raw is None:
        cfg.confirm = None
        return
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("confirm", f"allowed: {FORM}; got {raw!r}")
    c = validate(ConfirmConfig, raw, "confirm")
    if isinstance(c.seeds, int):
        if c.seeds < 2:
            raise UserError("confirm.seeds", f"a paired test needs at least 2 seeds; got {c.seeds}")
        c.seeds = [cfg.seed + i for i in range(1, c.seeds + 1)]
    if len(c.seeds) < 2 or len(set(c.seeds)) != len(c.seeds):
        raise UserError("confirm.seeds", f"at least 2 distinct seeds for a paired test; got {c.seeds}")
    if cfg.seed in c.seeds:  # the trials were chosen on that draw: re-using it would confirm the choice with itself
        raise UserError("confirm.seeds", f"{cfg.seed} is the search's own calibration seed (`seed`); give other seeds")
    cfg.confirm = c


def choose(trials: list[dict[str, Any]], top: int, sign: int) -> list[dict[str, Any]]:
    """The `top` best searched trials on valid (first objective; `sign` 1 minimizes, -1 maximizes),
    baselines aside, one per cell (two trials that ran the same cell are one candidate)."""
    seen, out = set(), []
    for t in sorted((t for t in trials if t.get("values") and not t.get("baseline")),
                    key=lambda t: (sign * t["values"][0], t["number"])):
        if t.get("cell_id") not in seen:
            seen.add(t.get("cell_id"))
            out.append(t)
    return out[:top]


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def compare(a: list[float], b: list[float], sign: int, level: float, log: bool = True) -> dict[str, Any]:
    """`a` against `b`, paired by seed (same order): the per-seed differences (in % when `log`),
    the paired t-test's p, the verdict for `a` (better / no significant difference / worse; `sign` 1:
    lower is better), and the smallest mean difference this n and spread detect at POWER."""
    from scipy import stats

    f = math.log if log else float
    d = [f(x) - f(y) for x, y in zip(a, b)]
    n = len(d)
    md, sd = mean_sd(d)
    if sd == 0:  # identical differences: the t statistic is infinite (or undefined when all are 0)
        p = 1.0 if md == 0 else 0.0
    else:
        p = float(stats.ttest_rel([f(x) for x in a], [f(y) for y in b]).pvalue)
    detect = (stats.t.ppf(1 - level / 2, n - 1) + stats.t.ppf(POWER, n - 1)) * sd / math.sqrt(n) if n > 1 else math.inf
    pct = (lambda x: 100 * math.expm1(x)) if log else (lambda x: x)
    verdict = "no significant difference"
    if p < level and md != 0:
        verdict = "better" if sign * md < 0 else "worse"
    return {"diff": pct(md), "per_seed": [pct(x) for x in d], "sd_diff": pct(sd), "p": p, "verdict": verdict,
            "detectable": pct(detect), "unit": "%" if log else ""}


def verdict(cands: list[dict], bases: list[dict], metric: str, direction: str, seeds: list[int], level: float) -> dict:
    """THE confirmation result. `cands` / `bases`: {label, valid: {seed: v}, test: {seed: v}, ...};
    the winner is the candidate with the best mean valid over `seeds` (never chosen on test); its
    test values are compared with every baseline's, paired by seed. Entries missing a seed are
    left out (listed under `incomplete`)."""
    sign = 1 if direction == "minimize" else -1
    log = metric.startswith("ppl.")
    full = lambda e: all(s in e["valid"] and s in e["test"] for s in seeds)  # noqa: E731
    out = {"metric": metric, "direction": direction, "seeds": seeds, "level": level,
           "test": f"paired t-test over {len(seeds)} calibration seeds on {'log ' if log else ''}test {metric}",
           "incomplete": [e["label"] for e in cands + bases if not full(e)], "winner": None, "vs": []}
    for e in cands + bases:
        v, t = [e["valid"][s] for s in seeds if s in e["valid"]], [e["test"][s] for s in seeds if s in e["test"]]
        e.update({"valid_mean_sd": mean_sd(v) if v else None, "test_mean_sd": mean_sd(t) if t else None})
    out["candidates"], out["baselines"] = cands, bases
    done = [c for c in cands if full(c)]
    if not done:
        return out
    win = min(done, key=lambda c: sign * c["valid_mean_sd"][0])
    out["winner"] = win["label"]
    for b in (b for b in bases if full(b)):
        r = compare([win["test"][s] for s in seeds], [b["test"][s] for s in seeds], sign, level, log)
        out["vs"].append({"baseline": b["label"], **r})
    return out


def lines(c: dict[str, Any]) -> list[str]:
    """The verdict as printed by `polyprune search` and `polyprune demo`."""
    m, seeds = c["metric"], c["seeds"]
    out = [f"confirmation: {len(c['candidates'])} best trials on valid and {len(c['baselines'])} baselines re-run with "
           f"calibration seeds {', '.join(map(str, seeds))}; winner on mean valid {m}; test: {c['test']}, level {c['level']:g}"]

    def ms(x):
        return f"{x[0]:.4g} ± {x[1]:.2g}" if x else "-"

    out.append(f"  {'':24s} {'valid ' + m:>18s} {'test ' + m:>18s}   (mean ± sd over {len(seeds)} seeds)")
    for e in c["candidates"] + c["baselines"]:
        mark = "winner " if e["label"] == c["winner"] else ""
        out.append(f"  {mark + e['label']:24s} {ms(e['valid_mean_sd']):>18s} {ms(e['test_mean_sd']):>18s}")
    if c["winner"] is None:
        out.append("  no candidate has every seed: no verdict")
    for v in c["vs"]:
        u = v["unit"]
        seeds_d = ", ".join(f"{x:+.2f}{u}" for x in v["per_seed"])
        out.append(f"  {c['winner']} vs {v['baseline']}: test {m} {v['diff']:+.2f}{u} (per seed {seeds_d}), "
                   f"p = {v['p']:.3g}: {v['verdict'].upper()} (detectable at 80% power: ±{v['detectable']:.2f}{u})")
    if c["incomplete"]:
        out.append(f"  missing seeds (left out): {', '.join(c['incomplete'])}")
    return out
