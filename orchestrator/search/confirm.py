"""The confirmation's rules (docs/search.md, "Confirmation"): the `confirm:` key, which trials are
candidates, the winner, and the verdict against each baseline. Plain functions of numbers: no Ray,
MLflow or Optuna, so they are tested on hand-made values. The stages that run the cells are
`selection` and `test_seeds`.

Two phases on disjoint calibration seeds, neither the search's own `seed`: the `top` candidates on
valid are re-run on the selection seeds and the winner is the best mean valid there; the winner and
every baseline are then run on fresh test seeds, which chose nothing, and only those make the verdict.
Per baseline, on the first objective's test value: the mean difference (% for a perplexity: on logs,
a ratio scale), the paired t-test's p over the test seeds (the seed is one calibration draw), a
bootstrap interval over the test seeds and the evaluation windows (`verdict_stats.bootstrap_diff`:
the text is a sample too), and Holm's adjustment of the p-values over the baselines. BETTER or WORSE
only when the adjusted p < level and the interval excludes 0 on the same side.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, StrictInt

from tasks.errors import UserError

from ..config import Strict

# THE default confirmation (the lead's benchmark of cost and spread decides them; docs/search.md).
DEFAULTS = {"top": 3, "selection_seeds": 4, "test_seeds": 6, "level": 0.05}
FORM = "true, false, or {top: K, selection_seeds: N | [S, ...], test_seeds: N | [S, ...], level: L}"


class ConfirmConfig(Strict):
    top: StrictInt = Field(DEFAULTS["top"], gt=0)  # the K best trials on valid, re-run on the selection seeds
    selection_seeds: list[StrictInt] | StrictInt = DEFAULTS["selection_seeds"]  # N: the next N free seeds after `seed`
    test_seeds: list[StrictInt] | StrictInt = DEFAULTS["test_seeds"]  # N: the next N free seeds after the selection's
    level: float = Field(DEFAULTS["level"], gt=0, lt=0.5)  # the tests' level; the interval covers 1 - level


def resolve(cfg) -> None:
    """`cfg.confirm` as a `ConfirmConfig` with both seed lists, or None (`confirm: false`)."""
    from ..config import switch

    if isinstance(cfg.confirm, dict) and "seeds" in cfg.confirm:
        raise UserError("confirm.seeds", "replaced by selection_seeds and test_seeds (the winner is chosen on the "
                                         "first and tested on the second, disjoint); give those")
    c = cfg.confirm = switch(cfg.confirm, ConfirmConfig, "confirm", FORM)
    if c is None:
        return
    taken = {cfg.seed} | {s for v in (c.selection_seeds, c.test_seeds) if isinstance(v, list) for s in v}
    for key, least in (("selection_seeds", 1), ("test_seeds", 2)):
        v = getattr(c, key)
        if isinstance(v, int):
            if v < least:
                raise UserError(f"confirm.{key}", f"at least {least} seed{'s' if least > 1 else ''}; got {v}")
            v = next_free(max([cfg.seed, *(c.selection_seeds if key == "test_seeds" else [])]), v, taken)
            taken |= set(v)
        elif len(v) < least or len(set(v)) != len(v):
            raise UserError(f"confirm.{key}", f"at least {least} distinct seed{'s' if least > 1 else ''}; got {v}")
        if cfg.seed in v:  # the trials were chosen on that draw: re-using it would confirm the choice with itself
            raise UserError(f"confirm.{key}", f"{cfg.seed} is the search's own calibration seed (`seed`); give other seeds")
        setattr(c, key, list(v))
    both = sorted(set(c.selection_seeds) & set(c.test_seeds))
    if both:  # a test seed that chose the winner would test the choice with itself
        raise UserError("confirm.test_seeds", f"{', '.join(map(str, both))} also in selection_seeds; the test seeds "
                                              f"must be fresh (they choose nothing)")
    cfg.confirm = c


def next_free(after: int, n: int, taken: set[int]) -> list[int]:
    out, s = [], after
    while len(out) < n:
        s += 1
        if s not in taken:
            out.append(s)
    return out


def choose(trials: list[dict[str, Any]], top: int, sign: int) -> list[dict[str, Any]]:
    """The `top` best searched trials on valid (first objective; `sign` 1 minimizes, -1 maximizes),
    one per cell (two trials that ran the same cell are one candidate)."""
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


def winner(candidates: list[dict], seeds: list[int], sign: int) -> dict | None:
    """The candidate with the best mean valid over every selection seed (never chosen on test); one
    missing a seed cannot win. Each candidate gets `valid_mean_sd`."""
    for e in candidates:
        v = [e["valid"][s] for s in seeds if s in e["valid"]]
        e["valid_mean_sd"] = mean_sd(v) if v else None
    full = [e for e in candidates if all(s in e["valid"] for s in seeds)]
    return min(full, key=lambda e: (sign * e["valid_mean_sd"][0], e["number"])) if full else None


def compare(a: list[float], b: list[float], log: bool = True) -> dict[str, Any]:
    """`a` against `b`, paired by seed (same order): the per-seed differences and their mean (in %
    when `log`), and the paired t-test's two-sided p."""
    from scipy import stats

    f = math.log if log else float
    d = [f(x) - f(y) for x, y in zip(a, b)]
    md, sd = mean_sd(d)
    if sd == 0:  # identical differences: the t statistic is infinite (or undefined when all are 0)
        p = 1.0 if md == 0 else 0.0
    else:
        p = float(stats.ttest_rel([f(x) for x in a], [f(y) for y in b]).pvalue)
    pct = (lambda x: 100 * math.expm1(x)) if log else (lambda x: x)
    return {"diff": pct(md), "per_seed": [pct(x) for x in d], "sd_diff": pct(sd), "p": p, "unit": "%" if log else ""}


def verdict(tested: list[dict], metric: str, direction: str, seeds: list[int], level: float,
            losses: dict[str, list] | None = None) -> dict[str, Any]:
    """THE verdict. `tested`: the winner first, then the baselines, each {label, valid: {seed: v},
    test: {seed: v}}; `losses`: label -> per test seed (in `seeds` order) {lang: (nll per window, tokens
    per window)} for the bootstrap (None or a label missing: no interval). Entries missing a seed are
    left out (listed under `incomplete`)."""
    from .verdict_stats import bootstrap_diff, holm

    sign, log = (1 if direction == "minimize" else -1), metric.startswith("ppl.")
    full = lambda e: all(s in e["test"] for s in seeds)  # noqa: E731
    for e in tested:
        t = [e["test"][s] for s in seeds if s in e["test"]]
        v = [e["valid"][s] for s in seeds if s in e.get("valid", {})]
        e.update({"test_mean_sd": mean_sd(t) if t else None, "valid_mean_sd": mean_sd(v) if v else None})
    out = {"vs": [], "incomplete": [e["label"] for e in tested if not full(e)], "beats_every_baseline": False}
    if not tested or not full(tested[0]):
        return out
    win, losses = tested[0], losses or {}
    for b in (b for b in tested[1:] if full(b)):
        r = {"baseline": b["label"], **compare([win["test"][s] for s in seeds], [b["test"][s] for s in seeds], log)}
        if log and win["label"] in losses and b["label"] in losses:
            boot = bootstrap_diff(losses[win["label"]], losses[b["label"]], level=1 - level)
            r.update({"low": boot["low_pct"], "high": boot["high_pct"], "n_windows": boot["n_windows"]})
        out["vs"].append(r)
    for r, p in zip(out["vs"], holm([r["p"] for r in out["vs"]]) if out["vs"] else []):
        r["p_holm"] = p
        side = sign * r["diff"]  # < 0: the winner is better
        agrees = "low" not in r or (r["high"] < 0 if r["diff"] < 0 else r["low"] > 0)
        r["verdict"] = ("better" if side < 0 else "worse") if p < level and r["diff"] != 0 and agrees else "no significant difference"
    out["beats_every_baseline"] = bool(out["vs"]) and not out["incomplete"] and all(r["verdict"] == "better" for r in out["vs"])
    return out


def metrics(c: dict[str, Any]) -> dict[str, float]:
    """The confirmation's numbers on the parent run: the winner's and each baseline's test mean and sd
    over the test seeds; per baseline the winner's mean difference (%), its interval, p and Holm's p;
    the cost of each phase."""
    from .baselines import metric_key

    m, out = c["metric"], {}
    for e in c.get("tested") or []:
        name = "winner" if e.get("role") == "winner" else metric_key(e["label"])
        if e.get("test_mean_sd"):
            out[f"confirm.{name}.test.{m}.mean"], out[f"confirm.{name}.test.{m}.sd"] = e["test_mean_sd"]
    if c.get("winner_number") is not None:
        out["confirm.winner.trial"] = c["winner_number"]
    for v in c.get("vs") or []:
        key = f"confirm.vs.{metric_key(v['baseline'])}"
        out.update({f"{key}.diff_pct": v["diff"], f"{key}.p": v["p"], f"{key}.p_holm": v["p_holm"]})
        if "low" in v:
            out.update({f"{key}.low_pct": v["low"], f"{key}.high_pct": v["high"]})
    if c.get("vs"):
        out["confirm.beats_every_baseline"] = float(c["beats_every_baseline"])
    for phase, cost in (c.get("cost") or {}).items():
        out.update({f"confirm.{phase}.runs": cost["runs"], f"confirm.{phase}.cell_s": cost["cell_s"]})
    return out


def lines(c: dict[str, Any]) -> list[str]:
    """The verdict as printed by `polyprune search`, `polyprune status` and `polyprune demo`."""
    m, sel, test = c["metric"], c["selection_seeds"], c["test_seeds"]

    def ms(x):
        return f"{x[0]:.4g} ± {x[1]:.2g}" if x else "-"

    def seeds(xs):
        return ", ".join(map(str, xs))

    out = [f"confirmation: the top {len(c['candidates'])} trials on valid re-run on selection seeds {seeds(sel)}; "
           f"the winner (best mean valid {m}) and every baseline run on test seeds {seeds(test)}, which chose nothing"]
    out.append(f"  {'selection':24s} {'valid ' + m:>18s}   (mean ± sd over {len(sel)} selection seeds)")
    for e in c["candidates"]:
        out.append(f"  {('winner ' if e['label'] == c['winner'] else '') + e['label']:24s} {ms(e.get('valid_mean_sd')):>18s}")
    if c["winner"] is None:
        out.append("  no candidate has every selection seed: no winner, no test phase")
    elif not c.get("tested"):
        out.append("  no test phase (no baselines to compare with, or the search stopped before it): no verdict")
    if c.get("tested"):
        out.append(f"  {'test phase':24s} {'valid ' + m:>18s} {'test ' + m:>18s}   (mean ± sd over {len(test)} test seeds)")
        for e in c["tested"]:
            mark = "winner " if e.get("role") == "winner" else ""
            out.append(f"  {mark + e['label']:24s} {ms(e.get('valid_mean_sd')):>18s} {ms(e.get('test_mean_sd')):>18s}")
    if c.get("vs"):
        out.append(f"  {c['test']}, level {c['level']:g}")
    for v in c.get("vs") or []:
        u = v["unit"]
        per = ", ".join(f"{x:+.2f}{u}" for x in v["per_seed"])
        ci = (f" [{100 * (1 - c['level']):g}% interval {v['low']:+.2f}{u} to {v['high']:+.2f}{u}, width {v['high'] - v['low']:.2f}{u}]"
              if "low" in v else " [no interval over the text: " + ("the runs' per-window losses are missing]" if m.startswith("ppl.")
                                                                     else "not a perplexity]"))
        out.append(f"  {c['winner']} vs {v['baseline']}: test {m} {v['diff']:+.2f}{u}{ci} (per seed {per}), "
                   f"p = {v['p']:.3g}, Holm p = {v['p_holm']:.3g}: {v['verdict'].upper()}")
    if c.get("vs"):
        n_better = sum(v["verdict"] == "better" for v in c["vs"])
        out.append(f"  {c['winner']} beats every baseline" if c["beats_every_baseline"] else
                   f"  {c['winner']} beats {n_better} of {len(c['vs'])} baselines compared: not every baseline")
    if c.get("incomplete"):
        out.append(f"  missing test seeds (left out): {', '.join(c['incomplete'])}")
    cost = c.get("cost") or {}
    if cost:
        out.append("  cost: " + "; ".join(f"{p} {x['runs']} runs, {x['cell_s']:.0f} s of cell time" for p, x in cost.items()))
    return out
