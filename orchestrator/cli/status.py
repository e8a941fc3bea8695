"""`polyprune status NAME`: progress of a sweep or search, read from MLflow.

NAME is the experiment name, or the sweep file itself (then its tracking_uri is
used and cells that have no run yet count as `todo`). A cell's state is the state
of its latest run, so a cell that failed and later finished counts as FINISHED.
`--watch` redraws until the sweep's parent run is no longer RUNNING.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


STATES = ("FINISHED", "RUNNING", "FAILED", "KILLED", "SCHEDULED", "todo")
COLOURS = {"FINISHED": "green", "RUNNING": "cyan", "FAILED": "red", "KILLED": "yellow", "todo": "dim"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="sweep / search name (MLflow experiment), or the sweep file")
    p.add_argument("--tracking-uri", default=None, help="default: the sweep file's store, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) while the sweep runs")


def add_cells(rows: dict, cells: list | None) -> None:
    for c in cells or []:
        rows.setdefault(c.cell_id, {"cell": c.cell_id, "state": "todo", "label": c.label(), "metrics": {}, "error": ""})


def collect(name: str, uri: str) -> tuple[dict, dict]:
    """(parent info, {cell or trial id: row}) of the latest run per cell."""
    from .. import names, tracking
    from ..report.confirmation import read as read_confirmation

    cl, exp = tracking.open_experiment(name, uri)
    parent, rows = {}, {}
    for r in sorted(tracking.all_runs(cl, exp), key=lambda r: r.info.start_time or 0):
        t = r.data.tags
        if t.get(tracking.ROLE) in ("sweep", "search") or tracking.PARENT not in t:
            parent = {"status": r.info.status, "run_id": r.info.run_id, "driver": t.get(tracking.DRIVER, ""),
                      "best": {f"trial {n}" for n in t.get(names.BEST_TRIALS, "").split(",") if n},
                      "confirmation": read_confirmation(cl, r.info.run_id) if names.CONFIRMED in t else None}
            continue
        # a trial is its own row even when two trials hit the same cell
        key = (f"trial {t[names.TRIAL]}" if names.TRIAL in t else f"trial {t[names.SCREENED]} (screen)" if names.SCREENED in t
               else t.get(tracking.CELL) or r.info.run_id)
        # a search's rows: which baseline a trial is; the best (chosen on valid) are marked from the parent
        label = (f"[{t[names.BASELINE]}] " if names.BASELINE in t else "") + _label(r)
        if names.CONFIRM in t:  # a confirmation run: its phase and which trial or baseline it re-runs
            label = f"[{t.get(names.CONFIRM_PHASE, 'confirm')} {t[names.CONFIRM]}] " + _label(r)
        if names.HELD_OUT in t:  # a best trial's test split, measured after the search
            label = f"[held-out trial {t[names.HELD_OUT]}] " + _label(r)
        rows[key] = {"cell": key, "state": r.info.status, "label": label, "metrics": r.data.metrics,
                     "error": t.get(tracking.ERROR, ""), "runs": rows.get(key, {}).get("runs", 0) + 1}
    return parent, rows


def _label(r) -> str:
    p = r.data.params
    if not p.get("method"):
        return r.info.run_name or ""
    if p["method"] == "dense":
        return f"{Path(p.get('model', '?')).name} dense"
    return f"{Path(p.get('model', '?')).name} {p['method']} {p.get('sparsity', '?')} {p.get('calib', '?')} seed={p.get('seed', '?')}"


def render(name: str, uri: str, parent: dict, rows: dict):
    from rich.console import Group
    from rich.markup import escape
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    counts = {s: sum(r["state"] == s for r in rows.values()) for s in STATES}
    states = "  ".join(f"[{COLOURS.get(s, 'white')}]{s} {n}[/]" for s, n in counts.items() if n) or "no cells yet"
    head = Text.from_markup(f"[bold]{escape(name)}[/]  ({escape(uri)})  sweep run: {parent.get('status', 'none')}\n{states}")
    table = Table(box=None, pad_edge=False)
    table.add_column("cell", min_width=16, no_wrap=True)
    table.add_column("state", min_width=8, no_wrap=True)
    table.add_column("cell values", overflow="ellipsis", no_wrap=True, max_width=40)
    table.add_column("ppl.mean", min_width=8, no_wrap=True, justify="right")
    held_out = any("test.ppl.mean" in r["metrics"] for r in rows.values())  # a search: ppl.mean is valid
    if held_out:
        table.add_column("test ppl.mean", min_width=8, no_wrap=True, justify="right")
    table.add_column("time s", min_width=6, no_wrap=True, justify="right")
    table.add_column("error", overflow="fold")
    for r in rows.values():
        m = r["metrics"]
        ppl = f"{m['ppl.mean']:.4g}" if "ppl.mean" in m else ""
        secs = f"{m['time.cell_s']:.1f}" if "time.cell_s" in m else ""
        test = [f"{m['test.ppl.mean']:.4g}" if "test.ppl.mean" in m else ""] if held_out else []
        cell = ("best " if r["cell"] in parent.get("best", ()) else "") + r["cell"]
        table.add_row(cell[:16], f"[{COLOURS.get(r['state'], 'white')}]{r['state']}[/]", escape(r["label"]), ppl, *test, secs,
                      escape(r["error"][:120]))
    total = len(rows)
    bar = ProgressBar(total=max(total, 1), completed=counts["FINISHED"], width=40)
    parts = [head, bar, Text(f"{counts['FINISHED']}/{total} cells finished"), table]
    c = parent.get("confirmation")
    if c and "test_seeds" in c:  # (a record from before the selection / test phases shows none)
        from ..search.confirm import lines

        parts.append(Text("\n".join([f"confirmation winner: {c['winner']}", *lines(c)])))
    return Group(*parts)


def run(args) -> int:
    if args.watch is not None and not args.watch > 0:  # also NaN
        from tasks.errors import UserError

        raise UserError("watch", f"must be a positive number of seconds, got {args.watch:g}")
    from rich.console import Console
    from rich.live import Live

    from .common import resolve_name

    name, uri, cells = resolve_name(args.name, args.tracking_uri)
    console = Console()

    def view():
        parent, rows = collect(name, uri)
        add_cells(rows, cells)
        return parent, rows, render(name, uri, parent, rows)

    parent, rows, shown = view()
    if args.watch is None:
        console.print(shown)
    else:
        with Live(shown, console=console, refresh_per_second=1) as live:
            while parent.get("status") == "RUNNING":
                time.sleep(args.watch)
                parent, rows, shown = view()
                live.update(shown)
    return 0
