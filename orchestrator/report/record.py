"""The report's input: the FINISHED runs of a sweep or search, read from MLflow, and the
small table helpers every section uses. Sections (`report.sweep`, `report.search`) and
the assembly (`report.build`) import from here; nothing here imports them."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tasks.errors import UserError

from .. import models, tracking
from ..names import BASELINE, CONFIRM, HELD_OUT, SCREENED, TRIAL

IDENTITY = ("model", "method", "sparsity", "calib", "seed")  # never part of a "variant" label
NOT_VARIANT = IDENTITY + ("seqlen", "data", "dtype")  # resolved or bookkeeping, not a design choice


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
        return self.params.get("method") == "dense"

    @property
    def baseline(self) -> str | None:
        """A search's baseline label (wanda·uniform, ...): its own runs, or a trial of an older record."""
        return self.tags.get(BASELINE)

    @property
    def calib(self) -> str:
        return calib_label(self.params.get("calib", "?"))

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0) or 0)

    @property
    def trial(self) -> int | None:
        t = self.tags.get(TRIAL)
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
    cl, exp = tracking.open_experiment(name, uri)
    parent, runs, held = None, [], {}
    for r in sorted(tracking.all_runs(cl, exp), key=lambda r: r.info.start_time or 0):
        t = r.data.tags
        if t.get(tracking.ROLE) in ("sweep", "search"):
            parent = parent or r  # the first parent is the one a resumed sweep reuses
        elif CONFIRM in t or SCREENED in t:  # confirmation re-runs: their own section (report.confirmation);
            continue  # a screened search's screens: low-fidelity drafts (the search's summary counts them)
        elif HELD_OUT in t:  # a trial's test split, measured after the search: read as the trial's own numbers
            if r.info.status == "FINISHED":
                held[t[HELD_OUT]] = {k: v for k, v in r.data.metrics.items() if k.startswith("test.")}
        elif r.info.status == "FINISHED" and (tracking.CELL in t or TRIAL in t or tracking.PARENT in t):
            runs.append(Run(r.info.run_id, dict(r.data.params), dict(r.data.metrics), dict(t)))
    for r in runs:
        r.metrics = {**held.get(r.tags.get(TRIAL), {}), **r.metrics}
    if not runs:
        raise UserError("NAME", f"{name!r} has no finished runs yet in {uri} (see `polyprune status {name}`)")
    label_variants(runs)
    return cl, parent, runs


def label_variants(runs: list[Run]) -> None:
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
        if not models.has_file(cl, r.id, r.tags, "masks.safetensors"):
            raise UserError("masks", f"run {r.id} ({r.variant or r.params.get('method')} {r.params.get('sparsity')} "
                                     f"{r.calib}) has no masks.safetensors artifact; re-run it or pass --no-overlap")


def fetch(cl, run: Run, artifact: str, tmp: Path) -> Path | None:
    if artifact not in run.files:
        try:  # in the run's logged model, or (older records) among the run's artifacts
            run.files[artifact] = models.run_file(cl, run.id, run.tags, artifact, tmp / run.id)
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
