"""A sweep's run: `execute` (the cells on Ray, recorded in MLflow) and `dry_run`.

Order of work: validate the whole file and every cell (nothing is created on a
bad file) -> open the MLflow store (the driver creates the sqlite schema, once;
a new store's creation overlaps Ray's start and the workers' imports, `session.starting`)
-> take the sweep's lease (`orchestrator.lease`: one driver per sweep, or exit 2)
-> skip cells already FINISHED -> connect to Ray -> parent run (reused on
resume; children a dead driver left RUNNING are ended KILLED) -> cells on worker
actors (`scheduler.run_cells`), each recorded when it comes back -> summary.
Exit 0 when every cell is FINISHED, 1 when some FAILED, 130 on Ctrl-C (in-flight
runs end KILLED).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import tracking
from ..lease import hold
from .record import Recorder, log
from .scheduler import FixedCells, run_cells
from .session import driving, starting

# ---------------------------------------------------------------- dry run


def dry_run(cfg, cells) -> int:
    """Print the cells, which are done, and an estimate; run and create nothing."""
    cl = tracking.client(cfg.tracking_uri, create=False)
    exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=False) if cl else None
    done = tracking.finished_cells(cl, exp, cfg.name) if exp else {}
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


def execute(cfg, cells, ray_address: str | None = None, file: Path | None = None) -> int:
    """Run `cells` of `cfg` (from `sweep.file.expand`) and record them; the exit code.
    Usable from Python (e.g. `polyprune demo` builds a SweepConfig in code: file=None)."""
    t0 = time.time()
    with starting(cfg.tracking_uri, ray_address, cfg.resources, log) as started:
        cl = tracking.client(cfg.tracking_uri, create=True)
        exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=True)  # creates the schema here, once
        with hold("sweep", cfg.name, cl, exp, tracking.sqlite_path(cfg.tracking_uri)):
            rec, status, code = run_parent(cfg, cells, cl, exp, ray_address, file, t0, started)
    summary(cfg, rec, status)
    return code


def run_parent(cfg, cells, cl, exp, ray_address, file, t0, started=None):
    """Under the sweep's lease: the parent run and the cells still to run; (recorder, status, exit code)."""
    done = tracking.finished_cells(cl, exp, cfg.name)
    todo = [c for c in cells if c.cell_id not in done]
    with driving(ray_address, needed=bool(todo), started=started):
        prov = tracking.provenance()
        parent = tracking.begin_parent(cl, exp, cfg.name, "sweep", prov, {"file": str(file.resolve()) if file else "",
                                                                           "cells": len(cells), "models": ",".join(cfg.models)})
        import yaml

        source = file.read_bytes() if file else yaml.safe_dump(cfg.model_dump(), sort_keys=False).encode()
        tracking.log_artifacts(cl, parent, {"sweep.yaml": source,
                                            "cells.json": json.dumps([{"cell_id": c.cell_id, **c.key} for c in cells],
                                                                     indent=1, default=str).encode()})
        rec = Recorder(cl, exp, parent, cfg.name, prov, total=len(cells), before=len(cells) - len(todo))
        log(f"sweep {cfg.name}: {len(cells)} cells, {len(cells) - len(todo)} already FINISHED, {len(todo)} to run; "
            f"MLflow {cfg.tracking_uri} (parent run {parent})")
        status, code = "FINISHED", 0
        try:
            if todo:
                run_cells(FixedCells(todo), cfg.resources, rec, log, pool=started.pool if started else None)
        except KeyboardInterrupt:
            status, code = "KILLED", 130
            rec.end_inflight("KILLED", "interrupted (Ctrl-C / SIGTERM)")
        except BaseException as e:
            status = "FAILED"
            rec.end_inflight("FAILED", f"the driver failed: {type(e).__name__}: {e}")
            raise
        finally:
            if status == "FINISHED" and rec.failures:
                status, code = "FAILED", 1
            tracking.log_metrics(cl, parent, {"cells.total": len(cells), "cells.finished": rec.before + len(rec.finished),
                                              "cells.failed": len(rec.failures), "time.sweep_s": time.time() - t0})
            cl.set_terminated(parent, status)
    return rec, status, code


def summary(cfg, rec: Recorder, status: str) -> None:
    print(f"sweep {cfg.name}: {status}; {rec.before + len(rec.finished)}/{rec.total} cells FINISHED "
          f"({len(rec.finished)} now, {rec.before} before), {len(rec.failures)} FAILED")
    for cell, error in rec.failures:
        print(f"  FAILED {cell.cell_id} {cell.label()}: {error}")
    print(f"record: {cfg.tracking_uri} (experiment {cfg.name!r}); browse: polyprune ui --tracking-uri '{cfg.tracking_uri}'")
