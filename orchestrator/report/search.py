"""The search part of `polyprune report` (runs tagged polyprune.trial): optimization
history, Pareto front, best mix against the baselines, parameter importances, and what
the search never saw: every trial's valid vs test value, and the best trial (chosen on
valid) against every baseline on test, per evaluation language."""

from __future__ import annotations

import json
from pathlib import Path

from ..names import OBJECTIVES, STORAGE, STUDY
from .record import IDENTITY, Run, eval_languages, slug, write_csv


def objectives(parent, trials: list[Run]) -> list[tuple[str, str]]:
    """[(metric, direction)] from the parent run's `objectives` param or tag (JSON list of
    {metric, direction}, or 'ppl.sw:minimize,ppl.mean:minimize'); default ppl.mean, minimize."""
    raw = None
    if parent is not None:
        d = {**parent.data.tags, **parent.data.params}
        raw = d.get("objectives") or d.get(OBJECTIVES)
    out = []
    if raw:
        try:
            for o in json.loads(raw):
                out.append((o["metric"], o.get("direction", "minimize")) if isinstance(o, dict) else (str(o), "minimize"))
        except (ValueError, TypeError, KeyError):
            for part in raw.split(","):
                metric, _, direction = part.strip().partition(":")
                out.append((metric, direction or "minimize"))
    out = [(m, d) for m, d in out if any(m in t.metrics for t in trials)]
    return out or [("ppl.mean", "minimize")]


def is_baseline(t: Run) -> bool:
    """A baseline's run (tagged), or a trial of a record from before baselines were tagged that ran
    one: a single language or an equal-weight mix."""
    if t.baseline is not None:
        return True
    weights = {w.partition("=")[2] for w in t.params.get("calib", "").split(",")}
    return "," not in t.calib or len(weights) == 1


def baseline_label(t: Run) -> str:
    return t.baseline or f"#{t.trial} {t.calib}"


def pareto_mask(points, directions) -> list[bool]:
    sign = [1 if d == "minimize" else -1 for d in directions]
    p = [[s * v for s, v in zip(sign, pt)] for pt in points]
    return [not any(all(b <= a for a, b in zip(pi, q)) and any(b < a for a, b in zip(pi, q)) for q in p) for pi in p]


def importances(parent, name: str, trials: list[Run], metric: str, direction: str) -> tuple[dict, str]:
    """Parameter importances (Optuna's default evaluator): from the study's own storage when the
    parent run names it, else from a study rebuilt from the MLflow record, where every varying
    param gets a float range or a category set and a mix becomes one weight per language."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    d = {**parent.data.tags, **parent.data.params} if parent is not None else {}
    storage = d.get("storage") or d.get("optuna.storage") or d.get(STORAGE)
    if storage:
        try:
            study = optuna.load_study(study_name=d.get("study") or d.get(STUDY) or name, storage=storage)
            # the first objective, as in the MLflow fallback below
            return optuna.importance.get_param_importances(study, target=lambda t: t.values[0]), f"Optuna storage {storage}"
        except Exception:
            pass  # storage gone or elsewhere: the MLflow record still has everything needed
    rows = []
    for t in trials:
        if metric not in t.metrics:
            continue
        p = {k: v for k, v in t.params.items() if k not in IDENTITY and not k.startswith("eval.")}
        for part in t.params.get("calib", "").split(","):
            lang, _, w = part.partition("=")
            p[f"w.{lang}"] = w or "1"
        rows.append((p, t.metrics[metric]))
    dists = {}
    for k in sorted({k for p, _ in rows for k in p}):
        vals = [p.get(k) for p, _ in rows]
        if len(set(vals)) < 2:
            continue
        try:
            nums = [float(v) if v is not None else 0.0 for v in vals]
            dists[k] = optuna.distributions.FloatDistribution(min(nums), max(nums))
        except ValueError:
            dists[k] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in vals}))
    if not dists or len(rows) < 3:
        return {}, ""
    study = optuna.create_study(direction=direction)
    for p, v in rows:
        params = {k: (float(p.get(k) or 0.0) if isinstance(dist, optuna.distributions.FloatDistribution) else str(p.get(k)))
                  for k, dist in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=v))
    return optuna.importance.get_param_importances(study), "trials in the MLflow record"


def search_sections(parent, name: str, runs: list[Run], out: Path) -> list:
    from . import figures as fig

    trials = sorted((r for r in runs if r.trial is not None), key=lambda r: r.trial)
    if not trials:
        return []
    # the baselines: their own runs (tagged, not trials), or trials of an older record that ran one
    bases = [r for r in runs if r.trial is None and r.baseline is not None] or [t for t in trials if is_baseline(t)]
    objs = objectives(parent, trials)
    items = []
    for metric, direction in objs:
        pts = [(t.trial, t.metrics[metric]) for t in trials if metric in t.metrics]
        if pts:
            items.append(("img", fig.history(out / f"search_history_{slug(metric)}.png", *zip(*pts), metric=metric, direction=direction),
                          f"Every trial's {metric} and the best so far."))
    scored = [t for t in trials if all(m in t.metrics for m, _ in objs)]
    front = pareto_mask([[t.metrics[m] for m, _ in objs] for t in scored], [d for _, d in objs])
    if len(objs) >= 2 and scored:
        (mx, _), (my, _) = objs[:2]
        items.append(("img", fig.pareto(out / "search_pareto.png", [t.metrics[mx] for t in scored], [t.metrics[my] for t in scored],
                                        front, [f"#{t.trial} {t.calib}" for t in scored], xmetric=mx, ymetric=my),
                      "Trials in the plane of the first two objectives; the non-dominated ones joined."))
    if scored:
        m0, d0 = objs[0]
        pool = [t for t, f in zip(scored, front) if f]
        best = (min if d0 == "minimize" else max)(pool, key=lambda t: t.metrics[m0])
        langs = eval_languages(trials)
        keys = [f"ppl.{l}" for l in langs] + ["ppl.mean"]
        series = {baseline_label(t): [t.metrics.get(k) for k in keys] for t in bases if t is not best}
        series[f"best #{best.trial} {best.calib}"] = [best.metrics.get(k) for k in keys]
        dense = [r for r in runs if r.dense]
        ylabel = "perplexity"
        if dense:  # differences of a few percent vanish on bars of absolute perplexity
            ref = [dense[-1].metrics.get(k) for k in keys]
            series = {s: [100 * (v / b - 1) if v is not None and b else None for v, b in zip(ys, ref)] for s, ys in series.items()}
            ylabel = "perplexity change vs dense (%)"
        items.append(("img", fig.grouped_bars(out / "search_best_vs_baselines.png", langs + ["mean"], series,
                                              title=f"best trial ({d0} {m0}) vs baselines", ylabel=ylabel),
                      f"Best trial #{best.trial}: calib {best.params.get('calib')}; " +
                      ", ".join(f"{k}={v}" for k, v in best.params.items() if k not in IDENTITY and not k.startswith("eval."))))
        items += held_out(best, trials, bases, m0, langs, out)
        imp, source = importances(parent, name, scored, m0, d0)
        if imp:
            items.append(("img", fig.importances(out / "search_importances.png", imp, title=f"parameter importances for {m0}"),
                          f"Optuna parameter importances (fANOVA), from the {source}."))
    items += rungs(parent, out)
    metrics = sorted({k for t in trials for k in t.metrics if k.startswith(("ppl.", "lmeval."))})
    write_csv(out / "search_trials.csv", ["trial", "calib", "baseline"] + metrics,
              [[t.trial, t.params.get("calib"), t.baseline or ""] + [t.metrics.get(k, "") for k in metrics] for t in trials])
    return [(f"Search: {len(trials)} trials", items)]


def rungs(parent, out: Path) -> list:
    """A screened search's compute per rung (search.fidelity), from its parent's rungs.* metrics."""
    m = parent.data.metrics if parent is not None else {}
    if "rungs.screen.runs" not in m:
        return []
    rows = [[r, int(m[f"rungs.{r}.runs"]), round(m[f"rungs.{r}.cell_s"], 1)] for r in ("screen", "full")]
    table = write_csv(out / "search_rungs.csv", ["rung", "runs", "cell seconds"], rows)
    return [("table", str(table), f"Compute per rung: every trial screened from the dense model's cached statistics, the best "
                                  f"fraction so far promoted to the exact prune. Statistics cache: {m['rungs.cache_bytes'] / 2**20:.1f} MiB, "
                                  f"built in {m['rungs.cache_build_s']:.1f} s (included in the screens' seconds).")]


def held_out(best: Run, trials: list[Run], bases: list[Run], metric: str, langs: list[str], out: Path) -> list:
    """The scatter of valid vs test (overfitting shows as points above the diagonal) and the
    table of the best trial against every baseline on test. A trial's test numbers are its run's
    (`test_every_trial`) or its held-out run's (`record.load_record` reads them as its own); a trial
    measured on valid only, or recorded before searches measured test, is not drawn."""
    from . import figures as fig

    items = []
    pts = [(t.metrics[metric], t.metrics[f"test.{metric}"], t in bases) for t in [*trials, *(b for b in bases if b.trial is None)]
           if metric in t.metrics and f"test.{metric}" in t.metrics]
    if pts:
        path = fig.valid_vs_test(out / f"search_valid_vs_test_{slug(metric)}.png", pts, metric=metric)
        items.append(("img", str(path), f"{metric} on valid and on test: every trial measured on test (the best ones; "
                                         "all with test_every_trial) and the baselines."))
    bases = [b for b in bases if b.baseline is not None and b is not best]
    keys = [f"test.ppl.{l}" for l in langs] + ["test.ppl.mean"]
    if bases and any(k in best.metrics for k in keys):
        header = ["language", f"best #{best.trial}"]
        for b in bases:
            header += [b.baseline, f"best - {b.baseline}"]
        rows = []
        for lang, k in zip(langs + ["mean"], keys):
            v = best.metrics.get(k)
            row = [lang, v if v is not None else ""]
            for b in bases:
                w = b.metrics.get(k)
                row += [w if w is not None else "", v - w if v is not None and w is not None else ""]
            rows.append(row)
        path = write_csv(out / "search_best_vs_baselines_test.csv", header, rows)
        items.append(("table", str(path), f"Test perplexity of the best trial #{best.trial} (chosen on valid {metric}) "
                                          "and of every baseline; negative differences: the best trial is better."))
    return items
