"""`polyprune demo`: the whole idea offline on a CPU in a few minutes.

Trains (once, then cached) a small multilingual byte-level Llama on the built-in
corpus, prunes it with Wanda calibrated in each of a few languages, and prints a
calibration-language x evaluation-language perplexity table with the offline
downstream accuracies next to it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# Defaults: 60-70% sparsity is where calibration language shows (SPEC, measured on this model).
DEFAULTS = dict(method="wanda", sparsity="0.65", calib="en,sw,zh", eval="en,sw,zh,de,ru", nsamples=64, seqlen=128,
                seed=0, limit=32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=DEFAULTS["method"])
    p.add_argument("--sparsity", default=DEFAULTS["sparsity"])
    p.add_argument("--calib", default=DEFAULTS["calib"], help="calibration languages, one pruned model each")
    p.add_argument("--eval", default=DEFAULTS["eval"], help="evaluation languages")
    p.add_argument("--nsamples", type=int, default=DEFAULTS["nsamples"])
    p.add_argument("--seqlen", type=int, default=DEFAULTS["seqlen"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="items per offline downstream task (0: skip them)")
    p.add_argument("--steps", type=int, default=None, help="demo-model training steps (default: the recipe's)")
    p.add_argument("--out", default=None, help="also write the table as JSON here")


def _langs(text: str, field: str) -> list[str]:
    from tasks.errors import UserError

    langs = [l.strip() for l in text.split(",") if l.strip()]
    if not langs:
        raise UserError(field, "give languages like en,sw")
    return langs


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from tasks import api
    from tasks.data import builtin
    from tasks.demo_model import DemoConfig, demo_model_path
    from tasks.errors import UserError

    calibs, evals = _langs(args.calib, "calib"), _langs(args.eval, "eval")
    for lang in calibs + evals:
        if lang not in builtin.LANGUAGES:
            raise UserError("calib" if lang in calibs else "eval", f"{lang!r} is not in the built-in corpus; allowed: {', '.join(builtin.LANGUAGES)}")
    if args.limit < 0:
        raise UserError("limit", f"must be >= 0, got {args.limit}")
    specs = [api.check_spec(api.PruneSpec(model="demo", method=args.method, sparsity=args.sparsity, calib=c, data="builtin",
                                          nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)) for c in calibs]
    console = Console(stderr=True)
    cfg = DemoConfig() if args.steps is None else DemoConfig(steps=args.steps)
    path = demo_model_path(cfg, progress=True)
    model, tok = api.load_model(str(path))
    dense = api.snapshot(model)
    tasks = [f"polyprune_{kind}_{lang}" for kind in ("cont", "langid") for lang in evals] if args.limit else []

    def evaluate() -> dict:
        metrics = api.ppl_metrics(api.perplexity(model, tok, evals, "builtin", args.seqlen))
        if tasks:
            from tasks.evaluation.lmeval import run_lmeval

            m = run_lmeval(model, tok, tasks, limit=args.limit)["metrics"]
            for kind in ("cont", "langid"):
                # acc_norm: per-byte likelihood, so a short distractor does not win by being short
                accs = [m[f"lmeval.polyprune_{kind}_{l}.acc_norm"] for l in evals]
                metrics[f"acc.{kind}"] = sum(accs) / len(accs)
        return metrics

    rows = {}
    with console.status("evaluating the dense model"):
        rows["dense"] = evaluate()
    for spec in specs:
        api.restore(model, dense)
        with console.status(f"{spec.method} {spec.sparsity} calibrated on {spec.calib}"):
            res = api.prune(model, tok, spec, progress=False)
            rows[f"{spec.method} {spec.sparsity} calib={spec.calib.split('=')[0]}"] = {**evaluate(), "sparsity": res.result["sparsity_actual"]}

    table = Table(title=f"demo model ({path.name[:12]}): perplexity on held-out text; lowest pruned value per column in bold")
    table.add_column("model")
    cols = [f"ppl.{l}" for l in evals] + (["acc.cont", "acc.langid"] if tasks else [])
    for c in cols:
        table.add_column(c, justify="right")
    pruned = [r for r in rows if r != "dense"]
    best = {c: min(rows[r][c] for r in pruned) if c.startswith("ppl") else max(rows[r][c] for r in pruned) for c in cols}
    for r, m in rows.items():
        cells = []
        for c in cols:
            text = f"{m[c]:.2f}" if c.startswith("ppl") else f"{m[c]:.3f}"
            cells.append(f"[bold]{text}[/bold]" if r != "dense" and m[c] == best[c] else text)
        table.add_row(r, *cells)
    Console().print(table)
    diag = sum(1 for l in calibs if l in evals and min(pruned, key=lambda r: rows[r][f"ppl.{l}"]).endswith(f"calib={l}"))
    shared = [l for l in calibs if l in evals]
    print(f"calibrating in the evaluation language gave the lowest perplexity in {diag} of {len(shared)} languages")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(math.isfinite(v) for m in rows.values() for v in m.values()) else 1
