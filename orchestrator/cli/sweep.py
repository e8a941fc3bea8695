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
    from ..engine.session import RaySession
    from ..sweep.driver import dry_run, execute
    from ..sweep.file import expand, load_sweep

    with RaySession(args.ray_address) as ray:
        if not args.dry_run:
            start_ahead(args, ray)
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
        return execute(cfg, cells, ray, Path(args.file))


def start_ahead(args, ray) -> None:
    """A first run of FILE on a local Ray: Ray starts while the file is validated (seconds each), for
    the driver to join (`RaySession.ahead`); undone when the file is refused. Only where polyprune is
    the program (`own_process`): a caller of `main([...])` (tests, a notebook) manages its own Ray."""
    if getattr(args, "own_process", False) and new_store(args.file, args.tracking_uri):
        ray.ahead()


def new_store(file: str, tracking_uri: str | None) -> bool:
    """Will this run create its sqlite store (a first run: Ray is needed), as far as the file's raw
    YAML says? A bad file is False here, and refused by `load_sweep` as it would be anyway."""
    from .. import tracking
    from ..config import resolve_tracking_uri
    from .ui import file_target

    try:
        found = file_target(file)
        uri = resolve_tracking_uri(tracking_uri, Path.cwd()) if tracking_uri else found["tracking_uri"] if found else None
    except Exception:  # the file's validation says what is wrong, with its own words
        return False
    path = tracking.sqlite_path(uri) if uri else None
    return path is not None and path.parent.is_dir() and not path.exists()
