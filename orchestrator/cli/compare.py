"""`polyprune compare RUN_A RUN_B`: two runs side by side (tables in `orchestrator.report.compare`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="MLflow run id, or a model: models:/<model_id> (or m-...), models:/<name>@<alias>")
    p.add_argument("run_b", metavar="RUN_B", help="MLflow run id, or a model (as RUN_A)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")


def run(args) -> int:
    from rich.console import Console

    from tasks.analysis.overlap import mask_overlap

    from .. import tracking
    from ..config import default_tracking_uri
    from ..report.compare import get_run, masks_of, overlap_table, side_by_side

    uri = default_tracking_uri(args.tracking_uri)
    cl = tracking.client(uri, create=False)
    if cl is None:
        raise UserError("tracking-uri", f"no MLflow store at {uri}")
    a = get_run(cl, args.run_a, "RUN_A", uri)
    b = get_run(cl, args.run_b, "RUN_B", uri)
    # piped output (tests, `| less`) would be cut to rich's default 80 columns: the tables are wide
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"A: {a.info.run_id} {a.info.run_name or ''} ({a.info.status})\nB: {b.info.run_id} {b.info.run_name or ''} ({b.info.status})")
    console.print(side_by_side("params", a.data.params, b.data.params, delta=False))
    console.print(side_by_side("metrics", a.data.metrics, b.data.metrics, delta=True))
    with tempfile.TemporaryDirectory(prefix="polyprune-compare-") as tmp:
        ma, mb = masks_of(cl, a, Path(tmp)), masks_of(cl, b, Path(tmp))
        missing = [name for name, m in (("A", ma), ("B", mb)) if m is None]
        if missing:  # a dense baseline has no masks: params and metrics still compare
            console.print(f"no mask overlap: run {' and '.join(missing)} has no masks.safetensors (a dense baseline?)")
        else:
            console.print(overlap_table(mask_overlap(ma, mb)))
    return 0
