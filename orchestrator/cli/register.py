"""`polyprune register NAME_OR_FILE --metric M --as MODEL_NAME`: the best pruned model of a sweep
or search as a version of a registered model, with alias `best`.

Best = the lowest value of M among the experiment's READY logged models (the highest for
accuracy-like metrics: anything not perplexity, loss, bits, time or memory). Registering again
adds a version and moves the alias only when the best model changed; with the same best
it changes nothing. `models:/MODEL_NAME@best` then names the winner (`polyprune eval`).
"""

from __future__ import annotations

import argparse

from tasks.errors import UserError

from .. import names
from ..models import ALIAS

LOWER = ("ppl.", "loss", "bits_per_byte", "perplexity", "time.", "memory.")
SPLITS = ("test", "valid")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME_OR_FILE", help="sweep or search name, or its file")
    p.add_argument("--metric", required=True, help="what 'best' is judged on, e.g. ppl.sw or lmeval.xnli_sw.acc")
    p.add_argument("--split", default="test", help="the metric's split: test (default) or valid (a search's trials log valid "
                   "as the metric; test, as test.<metric>, is on its best trials' held-out runs, or on every trial with "
                   "test_every_trial; a sweep's cells log the split their evaluation names)")
    p.add_argument("--as", dest="as_name", required=True, metavar="MODEL_NAME", help="registered model name")
    p.add_argument("--tracking-uri", default=None, help="default: the file's store, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")


def lower_is_better(metric: str) -> bool:
    return any(metric.startswith(x) if x.endswith(".") else x in metric for x in LOWER)


def metric_key(metric: str, split: str, values: dict, params: dict) -> str | None:
    """Which of a model's metrics is `metric` on `split`, or None. A search trial logs `valid` as
    the metric itself (what its sampler saw) and `test` as `test.<metric>`; a sweep cell logs one
    split, the one its param `eval.ppl_split` names (lm-eval metrics have no split of ours)."""
    if f"test.{metric}" in values:
        return f"test.{metric}" if split == "test" else metric
    if metric.startswith("ppl.") and params.get("eval.ppl_split", "test") != split:
        return None
    return metric


def experiment_of(name: str, tracking_uri: str | None) -> tuple[str, str]:
    """(experiment name, tracking uri) of NAME: a name, a sweep file or a search file."""
    from pathlib import Path

    from ..config import default_tracking_uri
    from .common import resolve_name

    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        import yaml

        raw = yaml.safe_load(Path(name).read_text())
        if isinstance(raw, dict) and "space" in raw:  # a search file
            from ..search.file import load_search

            cfg, _ = load_search(name)
            return cfg.name, default_tracking_uri(tracking_uri) if tracking_uri else cfg.tracking_uri
    got, uri, _ = resolve_name(name, tracking_uri)
    return got, uri


def run(args) -> int:
    from .. import models, tracking

    if args.split not in SPLITS:
        raise UserError("split", f"allowed: {', '.join(SPLITS)}; got {args.split!r}")
    models.check_registered_name(args.as_name, "as")
    name, uri = experiment_of(args.name, args.tracking_uri)
    cl, exp = tracking.open_experiment(name, uri)
    confirmed = confirmed_winner(cl, exp, name, args.metric)
    if confirmed:
        print(models.register_best(cl, args.as_name, *confirmed))
        print(f"use: polyprune eval --model models:/{args.as_name}@{ALIAS} --tracking-uri '{uri}' ...")
        return 0
    scored = []
    for m in models.all_models(cl, exp):
        # a confirmation re-run is evidence and a search's baseline a reference: neither is a candidate (a held-out
        # run is: the trial's own prune at the search's seed, the only model of a search with test numbers by default)
        if str(m.status) != "READY" or names.CONFIRM in (m.tags or {}) or names.BASELINE in (m.tags or {}):
            continue
        values = {x.key: x.value for x in m.metrics or []}
        key = metric_key(args.metric, args.split, values, m.params or {})
        if key in values:
            scored.append((values[key], m.creation_timestamp, key, m))
    if not scored:
        raise UserError("metric", f"no READY model of {name!r} has metric {args.metric!r} on the {args.split} split")
    low = lower_is_better(args.metric)
    # ties: the earliest model, so a rerun that adds an equal model does not move the alias
    value, _, key, best = min(scored, key=lambda t: (t[0] if low else -t[0], t[1]))
    kind = "search" if names.TRIAL in best.tags or names.HELD_OUT in best.tags else "sweep"
    text = (f"best of {kind} {name!r} by {key} ({'lowest' if low else 'highest'}) = {value:.6g}: "
            f"{best.name} ({best.model_id}, run {best.source_run_id})")
    print(models.register_best(cl, args.as_name, best, text, {names.METRIC: key, names.VALUE: f"{value:.10g}", names.SWEEP: name}))
    print(f"use: polyprune eval --model models:/{args.as_name}@{ALIAS} --tracking-uri '{uri}' ...")
    return 0


def confirmed_winner(cl, exp: str, name: str, metric: str):
    """(model, description, tags) of a search's confirmed winner (its trial's model) when the search
    confirmed on `metric`, else None. The winner was chosen on mean valid over the selection seeds;
    the description quotes its test mean over the test seeds against the baselines'."""
    from .. import tracking

    runs = tracking.all_runs(cl, exp)
    parents = [r for r in runs if r.data.tags.get(names.ROLE) == "search" and names.CONFIRMED in r.data.tags]
    if not parents:
        return None
    p = parents[0]
    number, m = p.data.tags[names.CONFIRMED], p.data.metrics
    test = m.get(f"confirm.winner.test.{metric}.mean")
    if test is None:  # confirmed on another metric: the plain path decides
        return None
    run = next((r for r in runs if r.data.tags.get(names.TRIAL) == number), None)
    if run is None or names.MODEL_ID not in run.data.tags:
        return None
    model = cl.get_logged_model(run.data.tags[names.MODEL_ID])
    vs = ", ".join(f"{k[len('confirm.vs.'):-len('.diff_pct')]} {v:+.2f}% (Holm p={m.get(k[:-len('diff_pct')] + 'p_holm', float('nan')):.3g})"
                   for k, v in sorted(m.items()) if k.startswith("confirm.vs.") and k.endswith(".diff_pct"))
    text = (f"confirmed winner of search {name!r}: trial {number}, chosen on mean valid {metric} over the selection "
            f"seeds; test {metric} mean {test:.6g} over the test seeds" + (f"; vs {vs}" if vs else "") + f": {model.name} ({model.model_id})")
    tags = {names.METRIC: metric, names.SPLIT: "test", names.VALUE: f"{test:.10g}", names.SWEEP: name, names.TRIAL: number}
    return model, text, tags
