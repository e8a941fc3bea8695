"""Per-trial time of `polyprune search` vs a cold `polyprune prune` + `polyprune eval` of the
same configuration.

A search trial runs on a long-lived worker actor that keeps the base model in memory
(restoring the dense weights from a snapshot between trials) and reuses the cached
calibration tokens; a cold run pays Python start-up, imports, model load, tokenising
and writing the pruned model for every configuration.

    python benchmarks/search_trial_time.py [--trials 6] [--layers 4] [--hidden 256] [--nsamples 16] [--seqlen 128]

Defaults: demo-sized random Llama (hidden 256, 4 blocks, FFN 672), a generated 3-language
text folder, mwanda_mix space, parallel 1 (so per-trial times are not two trials sharing
the cores). Prints a table; CPU only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=672)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--cold-runs", type=int, default=2)
    a = ap.parse_args()

    from conftest import save_tiny_model, tiny_llama_config, write_text_folder

    work = Path(tempfile.mkdtemp(prefix="polyprune-bench-search-"))
    save_tiny_model(work / "model", tiny_llama_config(layers=a.layers, hidden=a.hidden, ffn=a.ffn, heads=4, positions=512))
    write_text_folder(work / "text", n_docs=40, words_per_doc=200)
    langs = ["en", "de", "sw"]
    search = work / "search.yaml"
    search.write_text(yaml.safe_dump({
        "name": "bench", "model": "./model", "method": "mwanda", "sparsity": 0.5,
        "calibration": {"languages": langs, "data": "./text", "nsamples": a.nsamples, "seqlen": a.seqlen},
        "evaluation": {"ppl": {"languages": langs, "nsamples": 8}},
        "space": "mwanda_mix", "objectives": [{"metric": "ppl.sw"}], "n_trials": a.trials, "parallel": 1,
        "resources": {"cpu_workers": 1}, "sampler_seed": 0}, sort_keys=False))

    from orchestrator.search.driver import run_search

    t0 = time.perf_counter()
    summary = run_search(search)
    wall = time.perf_counter() - t0
    from mlflow import MlflowClient

    cl = MlflowClient(summary["tracking_uri"])
    exp = cl.get_experiment_by_name("bench")
    runs = sorted((r for r in cl.search_runs([exp.experiment_id]) if "polyprune.trial" in r.data.tags),
                  key=lambda r: int(r.data.tags["polyprune.trial"]))
    cell = [r.data.metrics["time.cell_s"] for r in runs]
    span = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]  # driver-side: MLflow run open to closed
    warm_cell, warm_span = cell[1:], span[1:]  # trial 0 loads the model into the worker

    # Cold: the same configuration as the last trial, as two fresh processes.
    last = summary["best"][0] if summary["best"] else None
    trial = next(r for r in runs if int(r.data.tags["polyprune.trial"]) == (last["number"] if last else 0))
    p = trial.data.params
    cold = []
    for i in range(a.cold_runs):
        out = work / f"cold{i}"
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "prune", "--model", str(work / "model"), "--method", "mwanda",
                        "--sparsity", "0.5", "--calib", p["calib"], "--data", str(work / "text"), "--nsamples", str(a.nsamples),
                        "--seqlen", str(a.seqlen), "--hp", f"lambda_var={p['lambda_var']}", "--hp", f"lambda_prob={p['lambda_prob']}",
                        "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
        t2 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--model", str(out), "--ppl", ",".join(langs),
                        "--data", str(work / "text"), "--seqlen", str(a.seqlen), "--nsamples", "8"],
                       check=True, capture_output=True, cwd=ROOT)
        cold.append((t2 - t1, time.perf_counter() - t2))

    med = statistics.median
    print(f"model: random Llama, {a.layers} blocks, hidden {a.hidden}, FFN {a.ffn}; calibration {a.nsamples} x {a.seqlen} "
          f"tokens over {len(langs)} languages; ppl on 3 x 8 windows; {os.cpu_count()} CPUs")
    print(f"search: {a.trials} trials, parallel 1, total wall {wall:.1f}s (Ray start, worker start, MLflow, figures included)")
    print(f"  trial 0 (loads the model into the worker): in-worker {cell[0]:.2f}s, driver-side {span[0]:.2f}s")
    print(f"  trials 1..{a.trials - 1}: in-worker median {med(warm_cell):.2f}s (min {min(warm_cell):.2f}), "
          f"driver-side median {med(warm_span):.2f}s")
    pr, ev = med([c[0] for c in cold]), med([c[1] for c in cold])
    print(f"cold prune + eval (two processes, median of {a.cold_runs}): {pr:.2f}s + {ev:.2f}s = {pr + ev:.2f}s")
    print(f"speed-up per trial: {(pr + ev) / med(warm_span):.1f}x (driver-side), {(pr + ev) / med(warm_cell):.1f}x (in-worker)")


if __name__ == "__main__":
    main()
