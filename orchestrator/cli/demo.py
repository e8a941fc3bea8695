"""`polyprune demo`: the whole flow offline on a CPU, in a few minutes.

1. trains (once, then cached) a small multilingual byte-level Llama on the built-in corpus;
2. writes a sweep file and runs it on a local Ray with the MLflow record: the dense model
   and Wanda calibrated in each of a few languages, perplexity per language and the
   offline downstream tasks;
3. prints the calibration-language x evaluation-language table;
4. runs a short Optuna search of M-Wanda calibration mixes against its baselines;
5. writes the report (HTML + figures) and logs it to MLflow.

Everything lands in --out (default ./polyprune-demo); running the demo again resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# 60-70% sparsity is where calibration language shows on this model (SPEC, measured here).
DEFAULTS = dict(method="wanda", sparsity="0.65", calib="en,sw,zh", eval="en,sw,zh,de,ru", nsamples=64, seqlen=128,
                seed=0, limit=32, trials=4, out="polyprune-demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=DEFAULTS["method"])
    p.add_argument("--sparsity", default=DEFAULTS["sparsity"])
    p.add_argument("--calib", default=DEFAULTS["calib"], help="calibration languages, one pruned model each")
    p.add_argument("--eval", default=DEFAULTS["eval"], help="evaluation languages")
    p.add_argument("--nsamples", type=int, default=DEFAULTS["nsamples"])
    p.add_argument("--seqlen", type=int, default=DEFAULTS["seqlen"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="items per offline downstream task (0: skip them)")
    p.add_argument("--trials", type=int, default=DEFAULTS["trials"], help="search trials, baselines included (0: no search)")
    p.add_argument("--steps", type=int, default=None, help="demo-model training steps (default: the recipe's)")
    p.add_argument("--out", default=DEFAULTS["out"], help="folder for the sweep/search files, MLflow and Optuna stores, report")


def _langs(text: str, field: str) -> list[str]:
    from tasks.data import builtin
    from tasks.errors import UserError

    langs = [l.strip() for l in text.split(",") if l.strip()]
    if not langs:
        raise UserError(field, "give languages like en,sw")
    for lang in langs:
        if lang not in builtin.LANGUAGES:
            raise UserError(field, f"{lang!r} is not in the built-in corpus; allowed: {', '.join(builtin.TARGETS)} and more")
    return langs


def run(args) -> int:
    import os

    import yaml

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per mask file drowns the output

    from tasks.errors import UserError

    calibs, evals = _langs(args.calib, "calib"), _langs(args.eval, "eval")
    for name in ("limit", "trials"):
        if getattr(args, name) < 0:
            raise UserError(name, f"must be >= 0, got {getattr(args, name)}")
    if args.trials and len(calibs) < 2:
        raise UserError("calib", "the search mixes calibration languages: give at least two (or --trials 0)")
    out = Path(args.out).resolve()
    if not out.parent.is_dir():
        raise UserError("out", f"parent folder {str(out.parent)!r} does not exist")

    from tasks.demo_model import DemoConfig, demo_model_path

    model = str(demo_model_path(DemoConfig() if args.steps is None else DemoConfig(steps=args.steps), progress=True))
    tasks = [f"polyprune_{kind}_{lang}" for kind in ("cont", "langid") for lang in evals]
    evaluation = {"ppl": {"languages": evals}}
    if args.limit:
        evaluation["lm_eval"] = {"tasks": tasks, "limit": args.limit}
    sweep_file = {
        "name": "polyprune-demo", "models": [model], "methods": [args.method], "sparsities": [args.sparsity],
        "calibration": {"languages": calibs, "data": "builtin", "nsamples": args.nsamples, "seqlen": args.seqlen},
        "seeds": [args.seed], "evaluation": evaluation, "resources": {"cpu_workers": 1},
        "tracking_uri": "sqlite:///mlflow.db",
    }
    out.mkdir(exist_ok=True)
    path = out / "demo_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
    from ..sweep.driver import execute
    from ..sweep.file import expand, load_sweep

    cfg = load_sweep(path)
    code = execute(cfg, expand(cfg), file=path)
    _print_table(cfg, evals, bool(args.limit))
    if args.trials:
        code = code or _search(out, model, args, calibs, evals)
    code = code or _report(out, cfg)
    print(f"\nall runs: polyprune ui --tracking-uri {cfg.tracking_uri}\nreport:   {out / 'report' / 'report.html'}")
    return code


def _print_table(cfg, evals: list[str], downstream: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from .. import tracking

    cl = tracking.client(cfg.tracking_uri, create=False)
    exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=False)
    rows = {}
    for r in tracking.finished_cells(cl, exp, cfg.name).values():
        p, m = r.data.params, r.data.metrics
        label = "dense" if p.get("method") == "dense" else f"{p['method']} {p['sparsity']} {p['calib'].split('=')[0]}"
        row = {f"ppl.{l}": m.get(f"ppl.{l}") for l in evals}
        if downstream:
            # acc_norm: per-byte likelihood, so a short distractor does not win by being short
            for kind in ("cont", "langid"):
                accs = [m.get(f"lmeval.polyprune_{kind}_{l}.acc_norm") for l in evals]
                row[f"acc.{kind}"] = sum(accs) / len(accs) if None not in accs else None
        rows[label] = row
    cols = list(next(iter(rows.values()), {}))
    pruned = [r for r in rows if r != "dense"]
    table = Table(title="perplexity on held-out text; downstream acc_norm (bold: best pruned model)")
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c.replace("acc.", ""), justify="right")
    for label in sorted(rows, key=lambda r: (r != "dense", r)):
        cells = []
        for c in cols:
            v = rows[label][c]
            vals = [rows[r][c] for r in pruned if rows[r][c] is not None]
            best = vals and (min(vals) if c.startswith("ppl") else max(vals))
            text = "-" if v is None else (f"{v:.2f}" if c.startswith("ppl") else f"{v:.3f}")
            cells.append(f"[bold]{text}[/bold]" if label != "dense" and v is not None and v == best else text)
        table.add_row(label, *cells)
    Console().print(table)
    own = [l for l in evals if any(r.endswith(f" {l}") for r in pruned)]
    wins = [l for l in own if min(pruned, key=lambda r: rows[r][f"ppl.{l}"] or float("inf")).endswith(f" {l}")]
    if own:
        print(f"calibrating in the evaluation language gave the lowest perplexity for {len(wins)} of {len(own)} "
              f"languages ({', '.join(wins) or 'none'})")


def _search(out: Path, model: str, args, calibs: list[str], evals: list[str]) -> int:
    import yaml

    from ..search.driver import run_search

    target = calibs[1] if len(calibs) > 1 else calibs[0]  # e.g. sw: the non-English language to keep
    search = {
        "name": "polyprune-demo-search", "model": model, "method": "mwanda", "sparsity": args.sparsity,
        "calibration": {"languages": calibs, "data": "builtin", "nsamples": args.nsamples, "seqlen": args.seqlen},
        "evaluation": {"ppl": {"languages": evals}}, "space": "mwanda_mix",
        "objectives": [{"metric": f"ppl.{target}", "direction": "minimize"}],
        "n_trials": args.trials, "parallel": 1,
        "storage": f"sqlite:///{out / 'optuna.db'}", "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
    }
    (out / "demo_search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    res = run_search(out / "demo_search.yaml")
    print(f"\nsearch of M-Wanda calibration mixes for ppl.{target} ({res['n_complete']} trials, baselines first):")
    for t in res["baselines"]:
        print(f"  baseline {t['baseline']:20s} calib={t['calib']:34s} ppl.{target}={t['values'][0]:.3f}")
    for t in res["best"]:
        print(f"  best: trial {t['number']:<14d} calib={t['calib']:34s} ppl.{target}={t['values'][0]:.3f}"
              + (f"  (a baseline: the searched mixes did not beat it; try --trials {4 * args.trials})" if t.get("baseline") else ""))
    return 0 if res["status"] == "FINISHED" else 1


def _report(out: Path, cfg) -> int:
    from . import main

    return main(["report", "polyprune-demo", "--tracking-uri", cfg.tracking_uri, "--out", str(out / "report")])
