"""A sweep's run: `execute` (the cells on Ray, recorded in MLflow) and `dry_run`.

The caller validates the whole file and every cell (nothing is created on a bad
file); `lifecycle.drive` does the rest (start-up, store, lease, parent run, interrupt,
final status); a sweep is only `SweepJob`: the cells not yet FINISHED as one stage,
each recorded by a `Recorder` when it comes back, then the summary.
Exit 0 when every cell is FINISHED, 1 when some FAILED, 130 on Ctrl-C (in-flight
runs end KILLED).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import tracking
from ..engine.lifecycle import Job, drive
from ..engine.record import Recorder, log
from ..engine.scheduler import FixedCells

# ---------------------------------------------------------------- dry run


def dry_run(cfg, cells) -> int:
    """Print the cells, which are done, and an estimate; run and create nothing."""
    done = tracking.finished_cells_at(cfg.tracking_uri, cfg.name)
    n_base = sum(c.kind == "baseline" for c in cells)
    print(f"sweep {cfg.name}: {len(cells)} cells ({n_base} dense baselines + {len(cells) - n_base} pruned), "
          f"{len(done)} already FINISHED in {cfg.tracking_uri}")
    print(f"{'cell_id':16}  {'state':9}  cell")
    for c in cells:
        print(f"{c.cell_id:16}  {'FINISHED' if c.cell_id in done else 'todo':9}  {c.label()}")
    print(estimate(cfg, cells, done))
    return 0


def estimate(cfg, cells, done) -> str:
    todo = [c for c in cells if c.cell_id not in done]
    pruned = [c for c in todo if c.kind == "prune"]
    ev = cells[0].key["eval"]
    calib = cfg.calibration
    parts = [f"to run: {len(todo)} cells; {len(pruned)} prune passes of {calib.nsamples} x "
             f"{calib.seqlen or 'model-length'} calibration tokens"]
    if ev["ppl"]:
        parts.append(f"perplexity in {len(ev['ppl']['languages'])} languages per cell")
    if ev["lm_eval"]:
        parts.append(f"{len(ev['lm_eval']['tasks'])} lm-eval tasks per cell")
    # Time from this sweep's own finished cells of the same model and method, when there are any.
    times: dict[tuple, list[float]] = {}
    for run in done.values():
        t = run.data.metrics.get("time.cell_s")
        if t is not None:
            times.setdefault((run.data.params.get("model"), run.data.params.get("method")), []).append(t)
    if not todo:
        return "estimate: nothing to run"
    if not times:
        return "estimate: " + "; ".join(parts) + " (no finished cells to time from yet)"
    every = [t for ts in times.values() for t in ts]
    total = 0.0
    for c in todo:
        key = (c.model, "dense" if c.kind == "baseline" else c.key["method"])
        ts = times.get(key, every)
        total += sum(ts) / len(ts)
    return "estimate: " + "; ".join(parts) + f"; about {total / 3600:.2f} worker-hours (divide by the number of workers), from {len(every)} finished cells"


# ---------------------------------------------------------------- the run


def execute(cfg, cells, ray=None, file: Path | None = None) -> int:
    """Run `cells` of `cfg` (from `sweep.file.expand`) and record them; the exit code. `ray`: the
    command's `RaySession`, or a Ray address (`lifecycle.drive`). Usable from Python (e.g.
    `polyprune demo` builds a SweepConfig in code: file=None)."""
    job = SweepJob(cfg, cells, file)
    out = drive(job, ray)
    summary(cfg, job.rec, out.status)
    return out.code


class SweepJob(Job):
    """A sweep for `lifecycle.drive`: one stage, its cells still to run (`FixedCells`), recorded by a `Recorder`."""

    kind = "sweep"

    def __init__(self, cfg, cells, file: Path | None):
        self.cfg, self.cells, self.file = cfg, cells, file
        self.name, self.tracking_uri, self.resources = cfg.name, cfg.tracking_uri, cfg.resources
        self.todo: list = []
        self.rec: Recorder | None = None

    def open(self, rec) -> bool:
        done = tracking.finished_cells(rec.cl, rec.exp, self.name)
        self.todo = [c for c in self.cells if c.cell_id not in done]
        return bool(self.todo)

    def parent(self):
        import yaml

        cfg, cells, file = self.cfg, self.cells, self.file
        source = file.read_bytes() if file else yaml.safe_dump(cfg.model_dump(), sort_keys=False).encode()
        return {}, {"file": str(file.resolve()) if file else "", "cells": len(cells), "models": ",".join(cfg.models)}, {
            "sweep.yaml": source,
            "cells.json": json.dumps([{"cell_id": c.cell_id, **c.key} for c in cells], indent=1, default=str).encode()}

    def stages(self, rec):
        n, todo = len(self.cells), self.todo
        self.rec = Recorder(rec.cl, rec.exp, rec.parent, self.name, rec.tags, total=n, before=n - len(todo))
        self.t0 = rec.t0
        log(f"sweep {self.name}: {n} cells, {n - len(todo)} already FINISHED, {len(todo)} to run; "
            f"MLflow {self.tracking_uri} (parent run {rec.parent})")
        if todo:
            yield FixedCells(todo), self.rec

    def stop(self, status: str, why: str) -> None:
        if self.rec is not None:
            self.rec.end_inflight(status, why)

    def has_failures(self) -> bool:
        return bool(self.rec and self.rec.failures)

    def end(self, status: str) -> None:
        r = self.rec
        tracking.log_metrics(r.cl, r.parent, {"cells.total": len(self.cells), "cells.finished": r.before + len(r.finished),
                                              "cells.failed": len(r.failures), "time.sweep_s": time.time() - self.t0})


def summary(cfg, rec: Recorder, status: str) -> None:
    print(f"sweep {cfg.name}: {status}; {rec.before + len(rec.finished)}/{rec.total} cells FINISHED "
          f"({len(rec.finished)} now, {rec.before} before), {len(rec.failures)} FAILED")
    for cell, error in rec.failures:
        print(f"  FAILED {cell.cell_id} {cell.label()}: {error}")
    print(f"record: {cfg.tracking_uri} (experiment {cfg.name!r}); browse: polyprune ui --tracking-uri '{cfg.tracking_uri}'")
