"""`polyprune report NAME --out DIR`: tables and figures of a sweep or search (work in `orchestrator.report`)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="sweep / search name (MLflow experiment), or the sweep file")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty, or an earlier report's) folder")
    p.add_argument("--tracking-uri", default=None, help="default: the sweep file's store, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    p.add_argument("--no-overlap", action="store_true", help="skip mask overlap (no masks downloaded)")


def run(args) -> int:
    from ..report.build import DEFAULTS, build, check_out
    from .common import resolve_name

    name, uri, _ = resolve_name(args.name, args.tracking_uri)
    out = check_out(args.out)
    res = build(name, uri, out, overlap=not args.no_overlap, log=not args.no_log)
    figures = sum(f.endswith(".png") for f in res["files"])
    where = f"; logged to run {res['parent']} under {DEFAULTS['artifact_path']}/" if res["parent"] else ""
    print(f"report of {name}: {res['html']} ({figures} figures){where}")
    return 0
