"""Report assembly (`polyprune report NAME --out DIR`): tables and figures of a sweep or search, from MLflow.

Reads the FINISHED child runs of experiment NAME (docs/record.md), writes
DIR/report.html (figures embedded as base64 PNG: it opens offline, from a mail or a
laptop) plus every figure as PNG and every table as CSV, and logs the folder to the
sweep's / study's parent run under `report/`, so the figures show in the MLflow UI.

Sections (per model x method x sparsity): calibration x evaluation language heatmaps
of perplexity and lm-eval accuracy relative to the dense baseline; metrics vs
sparsity per calibration language; mask overlap between calibration languages;
per-block target vs achieved sparsity. For searches (runs tagged polyprune.trial):
optimization history, Pareto front, best mix vs baselines, parameter importances.
Values over seeds are means; the CSVs hold exactly what the heatmaps show.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from tasks.errors import UserError

from ..names import MODEL_ID
from .record import Run, check_masks, load_record, write_csv

DEFAULTS = {
    "html": "report.html",
    "artifact_path": "report",  # folder of the parent run's artifacts
    "max_table_rows": 300,  # runs listed in the HTML table (runs.csv has all)
}


def runs_table(runs: list[Run], out: Path) -> tuple[list, list]:
    metrics = [k for k in sorted({k for r in runs for k in r.metrics})
               if k.startswith(("ppl.", "sparsity.", "time.prune", "time.eval")) or (k.startswith("lmeval.") and "stderr" not in k)]
    header = ["run_id", "model_id", "trial", "model", "method", "sparsity", "calib", "seed", "schedule"] + metrics
    rows = [[r.id, r.tags.get(MODEL_ID, ""), "" if r.trial is None else r.trial, r.model, r.variant or r.params.get("method", ""),
             r.params.get("sparsity", ""),
             r.calib if not r.dense else "", "" if r.dense else r.seed, r.params.get("schedule", "")] +
            [r.metrics.get(k, "") for k in metrics] for r in runs]
    write_csv(out / "runs.csv", header, rows)
    return header, rows


def write_html(path: Path, name: str, uri: str, sections: list, header: list, rows: list) -> None:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>polyprune report: {html.escape(name)}</title><style>"
             "body{font-family:sans-serif;margin:1.5em;max-width:1400px}figure{margin:1em 0}img{max-width:100%}"
             "figcaption{color:#444;font-size:.9em}table{border-collapse:collapse;font-size:.8em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}h2{border-bottom:1px solid #ddd}</style></head><body>",
             f"<h1>polyprune report: {html.escape(name)}</h1><p>{len(rows)} finished runs from <code>{html.escape(uri)}</code>. "
             "Every figure is also a PNG, every table a CSV, in this folder.</p><ul>"]
    parts += [f"<li><a href='#s{i}'>{html.escape(t)}</a></li>" for i, (t, _) in enumerate(sections)]
    parts.append("<li><a href='#runs'>Runs</a></li></ul>")
    for i, (title, items) in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(title)}</h2>")
        for kind, png, caption in items:
            if kind == "table":  # a CSV of the report's own, shown as written
                import csv

                head, *body = list(csv.reader(Path(png).open(encoding="utf-8")))
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{cell(_num(v))}</td>" for v in r) + "</tr>" for r in body)
                             + f"</table><p>{html.escape(caption)} <code>{html.escape(Path(png).name)}</code></p>")
                continue
            data = base64.b64encode(Path(png).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(Path(png).name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)} <code>{html.escape(Path(png).name)}</code></figcaption></figure>")
    parts.append("<h2 id='runs'>Runs</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows[:DEFAULTS["max_table_rows"]]]
    parts.append("</table></body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def check_out(out: str) -> Path:
    """A new or empty folder, or an earlier report (whose own files are replaced)."""
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise UserError("out", f"{out!r} is a file; give a folder")
        if any(path.iterdir()) and not (path / DEFAULTS["html"]).exists():
            raise UserError("out", f"{out!r} is neither empty nor an earlier report; choose a new folder")
    elif not path.parent.is_dir():
        raise UserError("out", f"parent folder {str(path.parent)!r} does not exist")
    return path


def build(name: str, uri: str, out: Path, overlap: bool = True, log: bool = True) -> dict:
    """The whole report; returns {"html", "files", "parent"}. Input is checked before anything is written."""
    cl, parent, runs = load_record(name, uri)
    if overlap:
        check_masks(cl, [r for r in runs if r.trial is None])
    if out.exists():
        for old in [*out.glob("*.png"), *out.glob("*.csv"), out / DEFAULTS["html"]]:
            old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="polyprune-report-") as tmp:
        from .analysis_figures import report_items
        from .confirmation import confirmation_sections
        from .search import search_sections
        from .sweep import sweep_sections

        sections = sweep_sections(cl, runs, out, Path(tmp), overlap) + search_sections(parent, name, runs, out)
        sections += confirmation_sections(cl, parent, out)
        sections += report_items(cl, parent, out, Path(tmp))  # `polyprune analyze`'s figures, when it ran
    header, rows = runs_table(runs, out)
    write_html(out / DEFAULTS["html"], name, uri, sections, header, rows)
    if log and parent is not None:
        cl.log_artifacts(parent.info.run_id, str(out), artifact_path=DEFAULTS["artifact_path"])
    return {"html": out / DEFAULTS["html"], "files": sorted(p.name for p in out.iterdir()),
            "parent": parent.info.run_id if parent is not None and log else None}
