"""`polyprune sweep FILE`: run a sweep file's grid on Ray, recorded in MLflow.

Order of work: validate the whole file and every cell (nothing is created on a
bad file) -> open the MLflow store (the driver creates the sqlite schema, once)
-> skip cells already FINISHED -> connect to Ray -> parent run (reused on
resume; children a dead driver left RUNNING are ended KILLED) -> cells on worker
actors, each recorded when it comes back -> summary. Exit 0 when every cell is
FINISHED, 1 when some FAILED, 130 on Ctrl-C (in-flight runs end KILLED).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tasks.errors import UserError

DEFAULTS = {
    "ray_address": None,  # None: RAY_ADDRESS if set (as under `ray job submit`), else a new local Ray
    "cell_delay_s": float(os.environ.get("POLYPRUNE_CELL_DELAY_S", 0)),  # test hook: slow cells to kill them mid-flight
    "ray_logs": os.environ.get("POLYPRUNE_RAY_LOGS", "") == "1",  # forward worker stdout/stderr to the driver
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="sweep file (YAML; SPEC 'Sweep and search files')")
    p.add_argument("--dry-run", action="store_true", help="print the cells, which are done, and an estimate; run nothing")
    p.add_argument("--ray-address", default=None, help="auto | HOST:PORT | ray://HOST:10001 (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the file's tracking_uri, else sqlite:///mlflow.db beside the file)")


def run(args) -> int:
    from .sweep_config import expand, load_sweep, resolve_tracking_uri

    cfg = load_sweep(args.file)
    if args.tracking_uri:
        cfg.tracking_uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    cells = expand(cfg)
    if args.dry_run:
        return dry_run(cfg, cells)
    return execute(cfg, cells, args.ray_address, Path(args.file))


# ---------------------------------------------------------------- dry run


def dry_run(cfg, cells) -> int:
    from . import tracking

    cl = tracking.client(cfg.tracking_uri, create=False)
    exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=False) if cl else None
    done = tracking.finished_cells(cl, exp, cfg.name) if exp else {}
    n_base = sum(c.kind == "baseline" for c in cells)
    print(f"sweep {cfg.name}: {len(cells)} cells ({n_base} dense baselines + {len(cells) - n_base} pruned), "
          f"{len(done)} already FINISHED in {cfg.tracking_uri}")
    print(f"{'cell_id':16}  {'state':9}  cell")
    for c in cells:
        print(f"{c.cell_id:16}  {'FINISHED' if c.cell_id in done else 'todo':9}  {c.label()}")
    print(_estimate(cfg, cells, done))
    return 0


def _estimate(cfg, cells, done) -> str:
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
    """Run `cells` of `cfg` (from `sweep_config.expand`) and record them; the exit code.
    Usable from Python (e.g. `polyprune demo` builds a SweepConfig in code: file=None)."""
    from . import tracking

    t0 = time.time()
    cl = tracking.client(cfg.tracking_uri, create=True)
    exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=True)  # creates the schema here, once
    done = tracking.finished_cells(cl, exp, cfg.name)
    todo = [c for c in cells if c.cell_id not in done]
    owns_ray = bool(todo) and connect(ray_address or DEFAULTS["ray_address"])
    prov = tracking.provenance()
    parent = tracking.begin_sweep(cl, exp, cfg.name, prov, {"file": str(file.resolve()) if file else "", "cells": len(cells),
                                                            "models": ",".join(cfg.models)})
    import yaml

    source = file.read_bytes() if file else yaml.safe_dump(cfg.model_dump(), sort_keys=False).encode()
    tracking.log_artifacts(cl, parent, {"sweep.yaml": source,
                                        "cells.json": json.dumps([{"cell_id": c.cell_id, **c.key} for c in cells],
                                                                 indent=1, default=str).encode()})
    rec = Recorder(cl, exp, parent, cfg.name, prov, total=len(cells), before=len(cells) - len(todo))
    _log(f"sweep {cfg.name}: {len(cells)} cells, {len(cells) - len(todo)} already FINISHED, {len(todo)} to run; "
         f"MLflow {cfg.tracking_uri} (parent run {parent})")
    status, code = "FINISHED", 0
    previous = _sigterm_as_interrupt()
    try:
        if todo:
            from .scheduler import run_cells

            run_cells(todo, cfg.resources, rec, DEFAULTS["cell_delay_s"], _log)
    except KeyboardInterrupt:
        status, code = "KILLED", 130
        rec.end_inflight("KILLED", "interrupted (Ctrl-C / SIGTERM)")
    except BaseException as e:
        status = "FAILED"
        rec.end_inflight("FAILED", f"the driver failed: {type(e).__name__}: {e}")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if status == "FINISHED" and rec.failures:
            status, code = "FAILED", 1
        tracking.log_metrics(cl, parent, {"cells.total": len(cells), "cells.finished": rec.before + len(rec.finished),
                                          "cells.failed": len(rec.failures), "time.sweep_s": time.time() - t0})
        cl.set_terminated(parent, status)
        if owns_ray:
            import ray

            ray.shutdown()
    _summary(cfg, rec, status)
    return code


def connect(address: str | None) -> bool:
    """Join (or start) Ray; False when this process is already connected (tests, notebooks)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": DEFAULTS["ray_logs"]}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a private local Ray: nobody to show a dashboard to
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError("ray-address", f"cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from None
    return True


def _sigterm_as_interrupt():
    """`ray job stop` and schedulers send SIGTERM: end in-flight runs KILLED, as on Ctrl-C."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


class Recorder:
    """The scheduler's events, written to MLflow: one child run per cell, kept across retries."""

    def __init__(self, cl, exp: str, parent: str, sweep: str, tags: dict, total: int, before: int):
        self.cl, self.exp, self.parent, self.sweep, self.tags = cl, exp, parent, sweep, tags
        self.total, self.before = total, before
        self.runs: dict[str, str] = {}  # cell_id -> run of a cell in flight
        self.finished: list = []
        self.failures: list[tuple] = []

    def start(self, cell) -> None:
        from . import tracking

        if cell.cell_id not in self.runs:
            self.runs[cell.cell_id] = tracking.start_cell(self.cl, self.exp, self.parent, self.sweep, cell, self.tags)

    def done(self, cell, out: dict) -> None:
        from . import tracking

        tracking.finish_cell(self.cl, self.runs.pop(cell.cell_id), out)
        self.finished.append(cell)
        m = out["metrics"]
        shown = f"ppl.mean={m['ppl.mean']:.4g}" if "ppl.mean" in m else ""
        self._line("FINISHED", cell, f"{shown} {m.get('time.cell_s', 0):.1f}s")

    def failed(self, cell, error: str, detail: str, tags: dict) -> None:
        from . import tracking

        tracking.fail_cell(self.cl, self.runs.pop(cell.cell_id), error, detail, "FAILED", tags)
        self.failures.append((cell, error))
        self._line("FAILED", cell, error)

    def retry(self, cell, error: str, attempt: int) -> None:
        from . import tracking

        tracking.log_tags(self.cl, self.runs[cell.cell_id], {"polyprune.retries": str(attempt), "polyprune.last_worker_error": error})
        self._line("RETRY", cell, f"worker lost ({error}); attempt {attempt + 1}")

    def end_inflight(self, status: str, why: str) -> None:
        from . import tracking

        for cell_id, run_id in list(self.runs.items()):
            try:
                tracking.fail_cell(self.cl, run_id, why, why, status)
            except Exception as e:  # keep ending the others
                _log(f"could not end run {run_id}: {e}")
            del self.runs[cell_id]

    def _line(self, state: str, cell, text: str) -> None:
        n = self.before + len(self.finished) + len(self.failures)
        _log(f"[{n:>{len(str(self.total))}}/{self.total}] {state:8} {cell.cell_id[:8]} {cell.label()}  {text}".rstrip())


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _summary(cfg, rec: Recorder, status: str) -> None:
    print(f"sweep {cfg.name}: {status}; {rec.before + len(rec.finished)}/{rec.total} cells FINISHED "
          f"({len(rec.finished)} now, {rec.before} before), {len(rec.failures)} FAILED")
    for cell, error in rec.failures:
        print(f"  FAILED {cell.cell_id} {cell.label()}: {error}")
    print(f"record: {cfg.tracking_uri} (experiment {cfg.name!r}); browse: polyprune ui --tracking-uri '{cfg.tracking_uri}'")
