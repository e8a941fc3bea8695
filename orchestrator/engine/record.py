"""The sweep's MLflow record: the scheduler's events written as one child run per cell, and
one LoggedModel per cell whose artifact location the cell's worker writes into."""

from __future__ import annotations

import os
import sys

from .. import models, tracking
from ..names import LAST_WORKER_ERROR, RETRIES

# Test hook: the worker pauses this long after each artifact it uploads (to kill it mid-upload).
UPLOAD_DELAY_S = float(os.environ.get("POLYPRUNE_UPLOAD_DELAY_S", 0))


class Recorder:
    """The scheduler's events, written to MLflow: one child run per cell, kept across retries.

    `labels` (a search's fixed stages): cell_id -> (its own tags, run name), on the run and its model;
    `results`: where each FINISHED cell's {"run_id", "metrics", "model_id"} goes (cell_id -> it)."""

    def __init__(self, cl, exp: str, parent: str, sweep: str, tags: dict, total: int, before: int,
                 labels: dict[str, tuple[dict, str]] | None = None, results: dict | None = None):
        self.cl, self.exp, self.parent, self.sweep, self.tags = cl, exp, parent, sweep, tags
        self.total, self.before = total, before
        self.labels, self.results = labels or {}, results if results is not None else {}
        self.runs: dict[str, str] = {}  # cell_id -> run of a cell in flight
        self.finished: list = []
        self.failures: list[tuple] = []

    def start(self, cell) -> None:
        if cell.cell_id not in self.runs:  # a retried cell keeps its run and model
            own, name = self.labels.get(cell.cell_id, ({}, None))
            run_id = tracking.start_cell(self.cl, self.exp, self.parent, self.sweep, cell, {**self.tags, **own}, run_name=name)
            self.runs[cell.cell_id] = run_id
            attach_model(self.cl, self.exp, run_id, cell, {tracking.CELL: cell.cell_id, tracking.SWEEP: self.sweep, **own})

    def done(self, cell, out: dict) -> None:
        run_id = self.runs.pop(cell.cell_id)
        problem = tracking.finish_cell(self.cl, run_id, out)
        if problem:
            self.failures.append((cell, problem))
            self.line("FAILED", cell, problem)
            return
        self.finished.append(cell)
        self.results[cell.cell_id] = {"run_id": run_id, "metrics": out["metrics"],
                                      "model_id": (cell.run.get("artifacts_to") or {}).get("model_id")}
        m = out["metrics"]
        shown = next((f"{k}={m[k]:.4g}" for k in ("ppl.mean", "test.ppl.mean") if k in m), "")  # a held-out cell: test only
        self.line("FINISHED", cell, f"{shown} {m.get('time.cell_s', 0):.1f}s")

    def failed(self, cell, error: str, detail: str, tags: dict) -> None:
        tracking.fail_cell(self.cl, self.runs.pop(cell.cell_id), error, detail, "FAILED", tags)
        self.failures.append((cell, error))
        self.line("FAILED", cell, error)

    def retry(self, cell, error: str, attempt: int) -> None:
        tracking.log_tags(self.cl, self.runs[cell.cell_id], retry_tags(error, attempt))
        self.line("RETRY", cell, f"worker lost ({error}); attempt {attempt + 1}")

    def end_inflight(self, status: str, why: str) -> None:
        for cell_id, run_id in list(self.runs.items()):
            try:
                tracking.fail_cell(self.cl, run_id, why, why, status)
            except Exception as e:  # keep ending the others
                log(f"could not end run {run_id}: {e}")
            del self.runs[cell_id]

    def line(self, state: str, cell, text: str) -> None:
        n = self.before + len(self.finished) + len(self.failures)
        label = self.labels.get(cell.cell_id, ({}, None))[1] or cell.label()
        log(f"[{n:>{len(str(self.total))}}/{self.total}] {state:8} {cell.cell_id[:8]} {label}  {text}".rstrip())


def attach_model(cl, exp: str, run_id: str, cell, tags: dict[str, str], trial: int | None = None) -> None:
    """The cell's PENDING LoggedModel, and where its worker is to write the artifacts: the cell's
    run options (they reach the worker with the task; they do not change the cell id)."""
    m = models.create(cl, exp, run_id, cell, tags, tracking.cell_params(cell), trial, cell.run.get("save_model", False))
    cell.run = {**cell.run, "artifacts_to": models.destination(m, cl.tracking_uri), "upload_delay_s": UPLOAD_DELAY_S}


def retry_tags(error: str, attempt: int) -> dict[str, str]:
    return {RETRIES: str(attempt), LAST_WORKER_ERROR: error}


def log(msg: str) -> None:
    """Progress goes to stderr; stdout keeps the summary."""
    print(msg, file=sys.stderr, flush=True)
