"""`polyprune analyze NAME|SWEEP.yaml`: what pruning kept, per language, inside the model
(language-specific neurons, representation drift, shared vs specific subspace) for a
sweep's finished runs; the work is in `orchestrator.report.analysis`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="sweep name (MLflow experiment), or the sweep file")
    p.add_argument("--languages", default=None, metavar="LANGS", help="e.g. en,sw (default: the sweep's evaluation languages)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the figures and CSVs (new, empty or an earlier analysis)")
    p.add_argument("--tracking-uri", default=None, help="default: the sweep file's store, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--nsamples", type=int, default=16, help="held-out windows per language (default 16)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: min(512, the model's positions))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-log", action="store_true", help="write --out only; log nothing to MLflow")


def run(args) -> int:
    from tasks.errors import UserError

    from ..report.analysis import analyze_sweep, check_out
    from .common import resolve_name

    if args.no_log and args.out is None:
        raise UserError("out", "--no-log needs --out (else the analysis would go nowhere)")
    if args.out is not None:
        check_out(args.out)
    name, uri, _ = resolve_name(args.name, args.tracking_uri)
    res = analyze_sweep(name, uri, args.languages, args.out, nsamples=args.nsamples, seqlen=args.seqlen,
                        device=args.device, log_mlflow=not args.no_log)
    where = [f"{res['out']}" if res["out"] else "", f"parent run {res['parent']} under analysis/" if res["parent"] else ""]
    print(f"analysis of {name}: {len(res['runs'])} runs ({len(res['skipped'])} skipped); "
          f"figures and CSVs in {' and '.join(w for w in where if w)}")
    print("\n".join(res["findings"]))
    return 0
