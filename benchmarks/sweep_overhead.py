"""How much does the sweep machinery cost? Three numbers from one run on the same cells:

1. `polyprune sweep` wall time, CLI start to exit (Ray start, MLflow schema, worker
   start, recording: everything);
2. the cells' own work: sum over cells of calibration + prune + eval time as the
   workers measured it, divided by the number of workers (the ideal wall time);
3. a naive baseline: one fresh Python process per cell running the same code
   (`worker.CellRunner`), W at a time: every cell pays imports and a model load.

Targets (issue 4): (1) within 10% of (2) once cells are not trivially short, and
(1) at least 2x faster than (3).

    python benchmarks/sweep_overhead.py                 # defaults below, ~5 min on 2 cores
    python benchmarks/sweep_overhead.py --seeds 0 1 2   # more cells: overhead amortises further
    python benchmarks/sweep_overhead.py --startup 5     # fixed start-up cost: early Ray start on / off, Ray's floor
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Defaults: a small Llama (the demo model's shape) and calibration/eval sizes that make a
# cell take seconds, not milliseconds, on a 2-core CPU.
DEFAULTS = dict(hidden=256, layers=4, heads=4, ffn=672, nsamples=32, seqlen=128, ppl_nsamples=16,
                methods=["wanda", "sparsegpt"], sparsities=["0.5", "2:4"], languages=["en", "sw", "en=0.5,sw=0.5"],
                seeds=[0], workers=1)


def make_model(path: Path, a) -> None:
    import torch
    from transformers import AutoModelForCausalLM, ByT5Tokenizer, LlamaConfig

    cfg = LlamaConfig(vocab_size=384, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)


def write_sweep(folder: Path, a) -> Path:
    import yaml

    sweep = {"name": "overhead", "models": ["./model"], "methods": a.methods, "sparsities": a.sparsities,
             "calibration": {"languages": a.languages, "data": "builtin", "nsamples": a.nsamples, "seqlen": a.seqlen},
             "seeds": a.seeds, "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": a.ppl_nsamples}},
             "resources": {"cpu_workers": a.workers}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def one_cell(task_json: str) -> None:
    """The naive baseline's unit: a fresh process runs one cell and exits."""
    from orchestrator.engine.worker import CellRunner

    out = CellRunner().run(json.loads(task_json))
    if not out["ok"]:
        sys.exit(f"cell failed: {out['error']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v[0]) if isinstance(v, list) else type(v),
                       nargs="+" if isinstance(v, list) else None, default=v)
    p.add_argument("--startup", type=int, metavar="REPEATS", default=0,
                   help="measure only the fixed start-up cost: a 2-cell sweep, REPEATS times (after one untimed "
                        "warm-up), wall minus the cells' time.cell_s (issue 13's definition), with Ray's early start "
                        "on and off, alternating, and Ray's own floor each repeat; prints each repeat (with the "
                        "1-minute load average before and after), the medians and their differences")
    p.add_argument("--before", type=Path, metavar="CHECKOUT",
                   help="with --startup: also time this checkout (e.g. a `git worktree` of an older commit, its "
                        "defaults), alternating with this one, so all see the same machine load")
    p.add_argument("--search-startup", type=int, metavar="REPEATS", default=0,
                   help="time a new search's start: the command to its first trial's run starting, REPEATS times")
    p.add_argument("--schema", type=int, metavar="REPEATS", default=0,
                   help="time a new sqlite MLflow store, MLflow migrating it vs a copy of polyprune's template "
                        "(orchestrator/schema.py), each in a fresh process after `import mlflow`, REPEATS times")
    p.add_argument("--new-store", help=argparse.SUPPRESS)
    p.add_argument("--ray-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one-cell", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one_cell:
        one_cell(a.one_cell)
        return 0
    if a.ray_floor:
        return ray_floor()
    if a.new_store:
        return new_store(a.new_store)
    if a.schema:
        return schema_times(a.schema)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "TOKENIZERS_PARALLELISM": "false"}
    if a.startup:
        return startup(a, env)
    if a.search_startup:
        return search_startup(a, env)
    with tempfile.TemporaryDirectory(prefix="polyprune-bench-") as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", a)
        path = write_sweep(tmp, a)
        from orchestrator.sweep.file import expand, load_sweep

        cells = expand(load_sweep(path))
        # warm the token caches once so neither contender pays for building them
        subprocess.run([sys.executable, __file__, "--one-cell", _task(cells[1])], cwd=ROOT, env=env, check=True)

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", str(path)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sweep_wall = time.perf_counter() - t0
        own, cell_s = _own_times(tmp / "mlflow.db")

        t0 = time.perf_counter()
        procs: list[subprocess.Popen] = []
        for c in cells:  # W fresh processes at a time
            while len([q for q in procs if q.poll() is None]) >= a.workers:
                time.sleep(0.05)
            procs.append(subprocess.Popen([sys.executable, __file__, "--one-cell", _task(c)], cwd=ROOT, env=env))
        if any(q.wait() for q in procs):
            raise SystemExit("a naive cell failed")
        naive_wall = time.perf_counter() - t0

    ideal = own / a.workers
    report = {"cells": len(cells), "workers": a.workers, "sweep_wall_s": round(sweep_wall, 2),
              "cells_own_work_s": round(own, 2), "cells_incl_load_s": round(cell_s, 2), "ideal_wall_s": round(ideal, 2),
              "overhead_vs_ideal": round(sweep_wall / ideal - 1, 3), "naive_wall_s": round(naive_wall, 2),
              "speedup_vs_naive": round(naive_wall / sweep_wall, 2)}
    print(json.dumps(report, indent=1))
    return 0


def startup(a, env: dict) -> int:
    """Fixed cost of a sweep: a fresh 2-cell sweep (wanda 50% in en and sw, plus its dense baseline),
    its wall time from CLI start to exit minus the sum of its cells' `time.cell_s` (load + calibrate +
    prune + evaluate), REPEATS times, for each contender in turn (alternating, so all see the same
    machine load): this checkout with Ray's early start (`RaySession`, POLYPRUNE_EARLY_RAY=1) and
    without it (=0), and with --before that checkout; each also times a rerun of the finished file
    (nothing to run: no Ray). Each repeat also times `ray_floor`, Ray's own part of any such sweep.
    Prints every repeat, then medians, what the early start saves and the fixed cost over the floor."""
    import statistics

    a.methods, a.sparsities, a.languages, a.seeds, a.workers = ["wanda"], ["0.5"], ["en", "sw"], [0], 1
    contenders = {"early": (ROOT, {"POLYPRUNE_EARLY_RAY": "1"}), "late": (ROOT, {"POLYPRUNE_EARLY_RAY": "0"})}
    if a.before:
        contenders = {"before": (a.before.resolve(), {}), **contenders}
    rows: dict[str, list[dict]] = {k: [] for k in [*contenders, "ray_floor"]}

    def timed(args: list[str], cwd: Path, extra: dict) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=cwd, env={**env, **extra}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="polyprune-bench-") as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", a)
        # One untimed sweep per contender first: the token caches (shared by all) and what a checkout
        # caches once per machine (the MLflow schema template) are built, so no repeat pays for them.
        for i in ["warm", *range(a.startup)]:
            for label, (code, extra) in contenders.items():
                folder = tmp / f"{label}{i}"
                folder.mkdir()
                (folder / "model").symlink_to(tmp / "model")
                path = write_sweep(folder, a)
                extra = {**extra, "PYTHONPATH": str(code)}
                load_before = os.getloadavg()[0]
                wall = timed(["-m", "orchestrator.cli", "sweep", str(path)], code, extra)
                _, cell_s = _own_times(folder / "mlflow.db")
                rerun = timed(["-m", "orchestrator.cli", "sweep", str(path)], code, extra)  # every cell done: no Ray
                row = {"wall_s": round(wall, 2), "cells_time_cell_s": round(cell_s, 2), "fixed_s": round(wall - cell_s, 2),
                       "rerun_s": round(rerun, 2), "load_avg_1min": [load_before, os.getloadavg()[0]]}
                print(label, i, json.dumps(row), flush=True)
                if i != "warm":
                    rows[label].append(row)
            load_before = os.getloadavg()[0]
            floor_s = timed([__file__, "--ray-floor"], ROOT, {})
            row = {"ray_floor_s": round(floor_s, 2), "load_avg_1min": [load_before, os.getloadavg()[0]]}
            print("ray_floor", i, json.dumps(row), flush=True)
            if i != "warm":
                rows["ray_floor"].append(row)
    med = statistics.median
    out: dict = {label: {"repeats": len(r), "fixed_s_median": med(x["fixed_s"] for x in r),
                         "rerun_s_median": med(x["rerun_s"] for x in r),
                         "fixed_s": [x["fixed_s"] for x in r], "rerun_s": [x["rerun_s"] for x in r]}
                 for label, r in rows.items() if label != "ray_floor"}
    floor = [x["ray_floor_s"] for x in rows["ray_floor"]]
    out["ray_floor"] = {"median_s": med(floor), "s": floor}
    early, late = out["early"]["fixed_s"], out["late"]["fixed_s"]
    out["early_start_saves_s"] = {"of_medians": round(med(late) - med(early), 2),
                                  "median_of_paired": round(med(b - e for e, b in zip(early, late)), 2), "keep_if_at_least": 0.5}
    out["fixed_over_ray_floor_s"] = {label: round(out[label]["fixed_s_median"] - med(floor), 2) for label in contenders}
    out["fixed_over_ray_floor_target_s"] = 1.5
    if a.before:
        out["early_over_before"] = round(out["early"]["fixed_s_median"] / out["before"]["fixed_s_median"], 3)
    out["load_avg_1min_max"] = max(max(x["load_avg_1min"]) for r in rows.values() for x in r)
    print(json.dumps(out, indent=1))
    return 0


def search_startup(a, env: dict) -> int:
    """`polyprune search` on a new study: seconds from the command to its first trial's run starting
    (the cell's MLflow run is created as it is sent to a worker, before the model loads), REPEATS times."""
    import statistics

    import yaml
    from mlflow import MlflowClient

    starts = []
    with tempfile.TemporaryDirectory(prefix="polyprune-bench-") as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", a)
        for i in ["warm", *range(a.search_startup)]:
            folder = tmp / f"search{i}"
            folder.mkdir()
            (folder / "model").symlink_to(tmp / "model")
            search = {"name": "overhead-search", "model": "./model", "method": "mwanda", "sparsity": 0.5,
                      "calibration": {"languages": ["en", "sw"], "data": "builtin", "nsamples": a.nsamples, "seqlen": a.seqlen},
                      "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": a.ppl_nsamples}}, "space": "mwanda_mix", "objectives": [{"metric": "ppl.mean"}],
                      "baselines": False, "confirm": False, "n_trials": 1, "parallel": 1, "sampler_seed": 0}
            (folder / "search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
            load_before, t0 = os.getloadavg()[0], time.time()
            subprocess.run([sys.executable, "-m", "orchestrator.cli", "search", "search.yaml"], cwd=folder,
                           env={**env, "PYTHONPATH": str(ROOT)}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cl = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
            exp = cl.get_experiment_by_name("overhead-search")
            first = min(r.info.start_time for r in cl.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''"))
            row = {"first_trial_s": round(first / 1000 - t0, 2), "load_avg_1min": [load_before, os.getloadavg()[0]]}
            print("search", i, json.dumps(row), flush=True)
            if i != "warm":
                starts.append(row["first_trial_s"])
    print(json.dumps({"first_trial_s_median": statistics.median(starts), "first_trial_s": starts, "target_s": 6.0}, indent=1))
    return 0


def ray_floor() -> int:
    """What any sweep on a fresh local Ray pays before and after its cells, none of it polyprune's:
    Ray's start, one worker actor importing torch (as `CellRunner` does) and answering, Ray's
    shutdown, the interpreter's exit (frozen as the CLI's is)."""
    import gc

    import ray

    class Actor:
        def __init__(self):
            import torch  # noqa: F401

        def ready(self) -> int:
            return 1

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(Actor).options(num_cpus=1).remote().ready.remote())
    ray.shutdown()
    gc.freeze()
    return 0


def new_store(how: str) -> int:
    """One fresh process: a new store made `how` (migrate | template), MLflow reading it; prints seconds."""
    from mlflow import MlflowClient

    from orchestrator import schema

    with tempfile.TemporaryDirectory(prefix="polyprune-schema-") as tmp:
        db = Path(tmp) / "mlflow.db"
        t0 = time.perf_counter()
        if how == "template" and not schema.seed(db):
            raise SystemExit("no template")
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        print(round(time.perf_counter() - t0, 3))
    return 0


def schema_times(repeats: int) -> int:
    import statistics

    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}

    def run(how: str) -> float:
        done = subprocess.run([sys.executable, __file__, "--new-store", how], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True)
        return float(done.stdout.split()[-1])

    run("template")  # makes the template once, if this machine has none yet
    times = {"migrate": [], "template": []}
    for _ in range(repeats):
        for how in times:
            times[how].append(run(how))
    out = {how: {"median_s": statistics.median(t), "s": t} for how, t in times.items()}
    out["load_avg_1min"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


def _task(cell) -> str:
    return json.dumps(cell.task())


def _own_times(db: Path) -> tuple[float, float]:
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{db}")
    exp = cl.get_experiment_by_name("overhead")
    own = incl = 0.0
    for r in cl.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000):
        m = r.data.metrics
        if "time.cell_s" in m:
            own += m.get("time.calib_s", 0) + m.get("time.prune_s", 0) + m.get("time.eval_s", 0)
            incl += m["time.cell_s"]
    return own, incl


if __name__ == "__main__":
    sys.exit(main())
