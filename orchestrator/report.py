"""`polyprune report NAME --out DIR`: tables and figures of a sweep or search, from MLflow.

Reads the FINISHED child runs of experiment NAME (SPEC "MLflow record"), writes
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

import argparse
import base64
import csv
import html
import math
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tasks.errors import UserError

DEFAULTS = {
    "html": "report.html",
    "artifact_path": "report",  # folder of the parent run's artifacts
    "max_table_rows": 300,  # runs listed in the HTML table (runs.csv has all)
}
IDENTITY = ("model", "method", "sparsity", "calib", "seed")  # never part of a "variant" label
NOT_VARIANT = IDENTITY + ("seqlen", "data", "dtype")  # resolved or bookkeeping, not a design choice


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="sweep / search name (MLflow experiment), or the sweep file")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty, or an earlier report's) folder")
    p.add_argument("--tracking-uri", default=None, help="default: the sweep file's store, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    p.add_argument("--no-overlap", action="store_true", help="skip mask overlap (no masks downloaded)")


# ------------------------------------------------------------------ the record


@dataclass
class Run:
    id: str
    params: dict
    metrics: dict
    tags: dict
    variant: str = ""  # method plus the settings that vary between this method's runs
    files: dict = field(default_factory=dict)  # artifact name -> local path, once downloaded

    @property
    def model(self) -> str:
        return Path(self.params.get("model", "?")).name or self.params.get("model", "?")

    @property
    def dense(self) -> bool:
        return self.params.get("method") == "dense" or self.tags.get("polyprune.kind") == "baseline"

    @property
    def calib(self) -> str:
        return calib_label(self.params.get("calib", "?"))

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0) or 0)

    @property
    def trial(self) -> int | None:
        t = self.tags.get("polyprune.trial")
        return int(t) if t is not None and str(t).isdigit() else None


def calib_label(calib: str) -> str:
    """'en=1' -> 'en'; mixes stay canonical ('en=0.5,sw=0.5')."""
    return calib[:-2] if calib.endswith("=1") and "," not in calib else calib


def mix_languages(label: str) -> list[str]:
    return [part.split("=")[0] for part in label.split(",")]


def sparsity_value(s: str) -> float:
    if ":" in s:
        n, m = s.split(":")
        return int(n) / int(m)
    return float(s)


def load_record(name: str, uri: str):
    """(client, parent run or None, FINISHED child runs); a bad name or an empty sweep is a UserError."""
    from . import tracking

    cl, exp = tracking.open_experiment(name, uri)
    parent, runs = None, []
    for r in sorted(tracking.all_runs(cl, exp), key=lambda r: r.info.start_time or 0):
        t = r.data.tags
        if t.get(tracking.ROLE) in ("sweep", "search"):
            parent = parent or r  # the first parent is the one a resumed sweep reuses
        elif r.info.status == "FINISHED" and (tracking.CELL in t or "polyprune.trial" in t or tracking.PARENT in t):
            runs.append(Run(r.info.run_id, dict(r.data.params), dict(r.data.metrics), dict(t)))
    if not runs:
        raise UserError("NAME", f"{name!r} has no finished runs yet in {uri} (see `polyprune status {name}`)")
    _label_variants(runs)
    return cl, parent, runs


def _label_variants(runs: list[Run]) -> None:
    """A method's runs that differ in a setting (schedule, lambda_var, nsamples...) are separate
    groups: label them `mwanda lambda_var=0.5`; settings that never vary stay out of the label."""
    by_method = defaultdict(list)
    for r in runs:
        if not r.dense and r.trial is None:
            by_method[r.params.get("method", "?")].append(r)
    for method, rs in by_method.items():
        keys = sorted({k for r in rs for k in r.params} - set(NOT_VARIANT))
        # varying among the runs that HAVE the key: owl_m only exists with schedule=owl, where it may be constant
        varying = [k for k in keys if not k.startswith("eval.") and len({r.params[k] for r in rs if k in r.params}) > 1]
        for r in rs:
            r.variant = " ".join([method] + [f"{k}={r.params[k]}" for k in varying if k in r.params])


def check_masks(cl, runs: list[Run]) -> None:
    """Every pruned run must have its masks (before anything is written)."""
    for r in runs:
        if r.dense:
            continue
        names = {a.path for a in cl.list_artifacts(r.id)}
        if "masks.safetensors" not in names:
            raise UserError("masks", f"run {r.id} ({r.variant or r.params.get('method')} {r.params.get('sparsity')} "
                                     f"{r.calib}) has no masks.safetensors artifact; re-run it or pass --no-overlap")


def fetch(cl, run: Run, artifact: str, tmp: Path) -> Path | None:
    if artifact not in run.files:
        try:
            run.files[artifact] = Path(cl.download_artifacts(run.id, artifact, str(tmp / run.id)))
        except Exception:  # absent (a dense run has no masks): the caller decides
            run.files[artifact] = None
    return run.files[artifact]


# ------------------------------------------------------------------ tables


def slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", "_".join(str(p) for p in parts if p != "")).strip("_").replace(":", "-")


def write_csv(path: Path, header: list, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(["" if (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in rows)
    return path


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def order_calibs(labels, langs) -> list[str]:
    """Single languages first (in evaluation order), then mixes."""
    single = [l for l in labels if "," not in l]
    return sorted(single, key=lambda l: (langs.index(l) if l in langs else len(langs), l)) + sorted(l for l in labels if "," in l)


def eval_languages(runs: list[Run]) -> list[str]:
    declared = next((r.params["eval.ppl_languages"].split(",") for r in runs if r.params.get("eval.ppl_languages")), [])
    found = {k[4:] for r in runs for k in r.metrics if k.startswith("ppl.") and k != "ppl.mean"}
    return [l for l in declared if l in found] + sorted(found - set(declared))


def acc_columns(runs: list[Run]) -> list[str]:
    """One lm-eval metric per task: acc, else acc_norm / exact_match / f1 (never stderr, never filtered)."""
    per_task = defaultdict(set)
    for r in runs:
        for k in r.metrics:
            parts = k.split(".")
            if parts[0] == "lmeval" and len(parts) == 3 and not parts[2].endswith("_stderr"):
                per_task[parts[1]].add(parts[2])
    out = []
    for task, ms in sorted(per_task.items()):
        m = next((m for m in ("acc", "acc_norm", "exact_match", "f1") if m in ms), sorted(ms)[0])
        out.append(f"lmeval.{task}.{m}")
    return out


def task_language(task: str, langs) -> str | None:
    return next((p for p in task.split("_") if p in langs), None)


# ------------------------------------------------------------------ output


def runs_table(runs: list[Run], out: Path) -> tuple[list, list]:
    metrics = [k for k in sorted({k for r in runs for k in r.metrics})
               if k.startswith(("ppl.", "sparsity.", "time.prune", "time.eval")) or (k.startswith("lmeval.") and "stderr" not in k)]
    header = ["run_id", "trial", "model", "method", "sparsity", "calib", "seed", "schedule"] + metrics
    rows = [[r.id, "" if r.trial is None else r.trial, r.model, r.variant or r.params.get("method", ""), r.params.get("sparsity", ""),
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
            data = base64.b64encode(Path(png).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(Path(png).name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)} <code>{html.escape(Path(png).name)}</code></figcaption></figure>")
    parts.append("<h2 id='runs'>Runs</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows[:DEFAULTS["max_table_rows"]]]
    parts.append("</table></body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")


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
        from .report_search import search_sections
        from .report_sweep import sweep_sections

        sections = sweep_sections(cl, runs, out, Path(tmp), overlap) + search_sections(parent, name, runs, out)
    header, rows = runs_table(runs, out)
    write_html(out / DEFAULTS["html"], name, uri, sections, header, rows)
    if log and parent is not None:
        cl.log_artifacts(parent.info.run_id, str(out), artifact_path=DEFAULTS["artifact_path"])
    return {"html": out / DEFAULTS["html"], "files": sorted(p.name for p in out.iterdir()),
            "parent": parent.info.run_id if parent is not None and log else None}


def run(args) -> int:
    from .status import resolve

    name, uri, _ = resolve(args.name, args.tracking_uri)
    out = check_out(args.out)
    res = build(name, uri, out, overlap=not args.no_overlap, log=not args.no_log)
    figures = sum(f.endswith(".png") for f in res["files"])
    where = f"; logged to run {res['parent']} under {DEFAULTS['artifact_path']}/" if res["parent"] else ""
    print(f"report of {name}: {res['html']} ({figures} figures){where}")
    return 0
