"""Analysis-inside-the-model benchmark on the demo model (CPU by default).

Prunes a few Wanda runs of the demo model through the tasks API (masks only), then times
`tasks.analysis.inside.analyze` for every (languages, runs) pair of the grid, with the
dense statistics computed once beforehand (as the cache serves them) and timed apart.
The expected cost is a * L (one shared dense forward per language) + b * L * R (one
forward per run and language); the fit of a and b is printed with the table.

    python benchmarks/analysis_speed.py [--langs 1,2,4] [--runs 1,2,4] [--nsamples 16] [--seqlen 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tasks.analysis.inside import AnalysisSpec, analyze, dense_statistics
from tasks.api import PruneSpec, prune, save_outputs
from tasks.demo_model import demo_model_path
from tasks.models import load_model, restore, snapshot

LANGUAGES = ["en", "sw", "zh", "ar", "de", "es", "ru", "hi"]


def make_runs(path: str, n: int, out: Path) -> dict[str, str]:
    """n Wanda runs at 60% sparsity, calibrated in different languages, saved as masks only."""
    model, tok = load_model(path)
    dense = snapshot(model)
    runs = {}
    for lang in LANGUAGES[:n]:
        res = prune(model, tok, PruneSpec(model=path, method="wanda", sparsity="0.6", calib=lang, nsamples=16, seqlen=128),
                    progress=False)
        runs[f"wanda-{lang}"] = str(save_outputs(out / lang, model, tok, res, save_model=False))
        restore(model, dense)
    return runs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--langs", default="1,2,4")
    p.add_argument("--runs", default="1,2,4")
    p.add_argument("--nsamples", type=int, default=16, help="windows per language")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="a local model folder (default: the demo model)")
    args = p.parse_args()
    n_langs = [int(x) for x in args.langs.split(",")]
    n_runs = [int(x) for x in args.runs.split(",")]
    path = args.model or str(demo_model_path())
    model, tok = load_model(path)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        runs = make_runs(path, max(n_runs), Path(tmp))
        t_prune = time.perf_counter() - t0
        spec = AnalysisSpec(languages=LANGUAGES[: max(n_langs)], nsamples=args.nsamples, seqlen=args.seqlen,
                            device=args.device, cache=False)
        t0 = time.perf_counter()
        dense = dense_statistics(model, tok, spec, progress=False)
        t_dense = time.perf_counter() - t0
        times, cpu = {}, {}  # wall and process CPU seconds (CPU time is steadier on a shared machine)
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every cell alike
            for L in n_langs:
                for R in n_runs:
                    sub = AnalysisSpec(**{**vars(spec), "languages": LANGUAGES[:L]})
                    t0, c0 = time.perf_counter(), time.process_time()
                    analyze(model, tok, dict(list(runs.items())[:R]), sub, dense=dense, progress=False)
                    times.setdefault((L, R), []).append(time.perf_counter() - t0)
                    cpu.setdefault((L, R), []).append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # least squares for t = a * L + b * L * R
    X = torch.tensor([[L, L * R] for L, R in med], dtype=torch.float64)
    y = torch.tensor(list(med.values()), dtype=torch.float64)
    a, b = torch.linalg.lstsq(X, y[:, None]).solution.flatten().tolist()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{'demo model' if args.model is None else args.model} ({params:.1f}M params), {args.nsamples} windows x "
          f"{args.seqlen} tokens per language, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"pruning {max(n_runs)} runs: {t_prune:.1f} s; dense statistics for {max(n_langs)} languages: {t_dense:.2f} s "
          f"({t_dense / max(n_langs):.2f} s per language, once per model and text: cached)")
    print(f"{'languages':>9s} {'runs':>5s} {'median s':>9s} {'s per run x language':>21s} {'CPU s':>7s}   all repeats (wall)")
    for (L, R), t in med.items():
        c = statistics.median(cpu[(L, R)])
        print(f"{L:9d} {R:5d} {t:9.2f} {t / (L * R):21.3f} {c:7.2f}   {' '.join(f'{x:.2f}' for x in times[(L, R)])}")
    print(f"fit t = a*L + b*L*R: a = {a:.3f} s per language (shared dense forward), b = {b:.3f} s per run and language")


if __name__ == "__main__":
    main()
