"""`polyprune sweep FILE`: run a sweep file's grid on Ray, recorded in MLflow (work in `orchestrator.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="sweep file (YAML; keys in docs/sweeps.md)")
    p.add_argument("--dry-run", action="store_true", help="print the cells, which are done, and an estimate; run nothing")
    p.add_argument("--ray-address", default=None, help="auto | HOST:PORT | ray://HOST:10001 (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the file's tracking_uri, else sqlite:///mlflow.db beside the file)")


def run(args) -> int:
    from .. import tracking
    from ..config import resolve_tracking_uri
    from ..sweep.driver import dry_run, execute
    from ..sweep.file import expand, load_sweep

    cfg = load_sweep(args.file)
    if args.tracking_uri:
        cfg.tracking_uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    # The final store, probed before the cells are checked (seconds) and before `execute` starts Ray
    # alongside its creation: a refused store (a missing folder, Ray's per-job copy, a server that
    # is down) is one line at once, and launches nothing.
    tracking.client(cfg.tracking_uri, create=False)
    cells = expand(cfg)
    if args.dry_run:
        return dry_run(cfg, cells)
    return execute(cfg, cells, args.ray_address, Path(args.file))
