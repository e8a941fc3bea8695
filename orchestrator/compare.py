"""`polyprune compare RUN_A RUN_B`: two MLflow runs side by side.

Params (differences highlighted), metrics with their difference, and the overlap
of the two runs' masks per block and linear type (Jaccard of the pruned sets,
streamed one weight at a time from the bit-packed files).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="MLflow run id")
    p.add_argument("run_b", metavar="RUN_B", help="MLflow run id")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")


def get_run(cl, run_id: str, field: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_run(run_id)
    except MlflowException:
        raise UserError(field, f"no run {run_id!r} in {uri}") from None


def masks_of(cl, run, tmp: Path) -> Path | None:
    if "masks.safetensors" not in {a.path for a in cl.list_artifacts(run.info.run_id)}:
        return None
    return Path(cl.download_artifacts(run.info.run_id, "masks.safetensors", str(tmp / run.info.run_id)))


def side_by_side(title: str, a: dict, b: dict, delta: bool):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("name", no_wrap=True)
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    if delta:
        t.add_column("B - A", justify="right")
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        style = "" if va == vb else "bold yellow"
        cells = [k, _fmt(va), _fmt(vb)]
        if delta:
            cells.append(_fmt(vb - va) if isinstance(va, float) and isinstance(vb, float) else "")
        t.add_row(*cells, style=style)
    return t


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def overlap_table(rows: list[dict]):
    """Block x linear type, plus the block's pooled value and the whole model's."""
    from rich.table import Table

    from tasks.analysis.overlap import jaccard_by, jaccard_total

    cells = jaccard_by(rows, ("block", "linear"))
    per_block = jaccard_by(rows, "block")
    linears = list(dict.fromkeys(r["linear"] for r in rows))
    t = Table(title=f"mask overlap (Jaccard of pruned sets); whole model {jaccard_total(rows):.4f}", title_justify="left")
    t.add_column("block", justify="right")
    for lin in linears:
        t.add_column(lin, justify="right")
    t.add_column("block", justify="right", style="bold")
    for blk in per_block:
        t.add_row(str(blk), *[f"{cells[(blk, lin)]:.3f}" if (blk, lin) in cells else "-" for lin in linears], f"{per_block[blk]:.3f}")
    return t


def run(args) -> int:
    from rich.console import Console

    from tasks.analysis.overlap import mask_overlap

    from . import tracking
    from .status import default_uri

    uri = default_uri(args.tracking_uri)
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
