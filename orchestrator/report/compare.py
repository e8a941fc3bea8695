"""Two MLflow runs side by side (`polyprune compare RUN_A RUN_B`): rich tables.

Params (differences highlighted), metrics with their difference, and the overlap
of the two runs' masks per block and linear type (Jaccard of the pruned sets,
streamed one weight at a time from the bit-packed files).
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import UserError

from .. import models


def get_run(cl, ref: str, field: str, uri: str):
    """The run a run id names, or the source run of a model (`models:/<id>`, its bare id
    `m-...`, `models:/<name>@<alias>`)."""
    from mlflow.exceptions import MlflowException

    if ref.startswith("m-") and "/" not in ref:
        ref = f"models:/{ref}"
    run_id = models.logged_model(cl, ref, field).source_run_id if ref.startswith("models:/") else ref
    try:
        return cl.get_run(run_id)
    except MlflowException:
        raise UserError(field, f"no run {run_id!r} in {uri}") from None


def masks_of(cl, run, tmp: Path) -> Path | None:
    return models.run_file(cl, run.info.run_id, run.data.tags, "masks.safetensors", tmp / run.info.run_id)


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
