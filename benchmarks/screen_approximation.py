"""How far is a prune from the dense model's cached statistics from the exact sequential prune? (issue 29)

    python benchmarks/screen_approximation.py [--sparsities 0.5,0.6,0.7] [--configs wanda,mwanda,...] [--threads 1]
                                              [--out benchmarks/results/screen_approximation.jsonl]
    python benchmarks/screen_approximation.py --summary     # the tables from the results file only

On the shipped demo model at the demo's calibration (en,sw,zh equal shares, 64 x 128 tokens, seed 0),
each configuration and sparsity is pruned by the exact sequential pipeline (tasks.api.prune) and from
the dense model's cached per-language statistics (tasks.api.prune_from_cache), from the same dense
weights. Reported: the share of mask entries both agree on (all blocks, and per block: block 0 must
agree exactly), the objective (valid ppl.mean over en,sw,zh,de,ru, all windows) of each and their
relative difference, and the time of each prune; once, the cache's build time (three dense passes,
in a fresh folder) and size on disk. One JSON line per cell is appended to --out (resumable); the
summary writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

EVAL = ["en", "sw", "zh", "de", "ru"]
DEMO = dict(calib="en,sw,zh", nsamples=64, seqlen=128, seed=0)
CONFIGS = {  # name -> (method, schedule, hp): explicit coefficients, so changed defaults change no row
    "wanda": ("wanda", "uniform", {}),
    "mwanda": ("mwanda", "uniform", {"lambda_var": 1.0, "lambda_prob": 0.5}),
    "mwanda+owl": ("mwanda", "owl", {"lambda_var": 1.0, "lambda_prob": 0.5}),
    "mwanda+cwl": ("mwanda", "cwl", {"lambda_var": 1.0, "lambda_prob": 0.5, "cwl_lambda": 0.08}),
}


def run(args) -> None:
    import torch

    from tasks.api import PruneSpec, load_model, perplexity, ppl_metrics, prune, prune_from_cache, restore, snapshot, stats_cache
    from tasks.demo_model import DemoConfig, demo_model_path

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = read(out)
    done = {(r["config"], r["sparsity"]) for r in rows if "config" in r}
    path = str(demo_model_path(DemoConfig(), progress=True))
    model, tok = load_model(path)
    dense = snapshot(model)

    def objective():
        t0 = time.perf_counter()
        ppl = perplexity(model, tok, EVAL, data="builtin", seqlen=DEMO["seqlen"], split="valid")
        return ppl_metrics(ppl)["ppl.mean"], time.perf_counter() - t0

    base = PruneSpec(model=path, method="wanda", sparsity="0.5", **DEMO)
    if not any(r.get("dense") for r in rows):
        t0 = time.perf_counter()
        built = stats_cache(model, tok, base, root=tempfile.mkdtemp()).summary()  # a fresh folder: the build is timed
        append(out, {"dense": True, "ppl_mean": objective()[0], "cache": {"bytes": built["bytes"], "build_s": built["build_s"],
                     "call_s": time.perf_counter() - t0}, "threads": args.threads, "load": os.getloadavg()[0]})
    cache = stats_cache(model, tok, base)
    for sparsity in args.sparsities.split(","):
        for name in args.configs.split(","):
            if (name, sparsity) in done:
                continue
            method, schedule, hp = CONFIGS[name]
            spec = PruneSpec(model=path, method=method, sparsity=sparsity, schedule=schedule, hp=hp, **DEMO)
            row = {"config": name, "sparsity": sparsity, "load": os.getloadavg()[0]}
            masks = {}
            for stats, fn in (("exact", lambda: prune(model, tok, spec, progress=False)),
                              ("cached", lambda: prune_from_cache(model, tok, spec, cache))):
                restore(model, dense)
                t0 = time.perf_counter()
                masks[stats] = fn().masks
                prune_s = time.perf_counter() - t0
                ppl, eval_s = objective()
                row[stats] = {"prune_s": prune_s, "eval_s": eval_s, "ppl_mean": ppl}
            restore(model, dense)
            per_block: dict[str, list[int]] = {}
            for k, m in masks["exact"].items():
                b = k.split(".layers.")[1].split(".")[0]
                agree = per_block.setdefault(b, [0, 0])
                agree[0] += int((m == masks["cached"][k]).sum())
                agree[1] += m.numel()
            row["agreement"] = sum(a for a, _ in per_block.values()) / sum(n for _, n in per_block.values())
            row["agreement_per_block"] = {b: a / n for b, (a, n) in per_block.items()}
            row["rel_diff"] = row["cached"]["ppl_mean"] / row["exact"]["ppl_mean"] - 1
            append(out, row)
            print(f"{name:<11} {sparsity}  agree {row['agreement']:.4f}  exact {row['exact']['ppl_mean']:.4f}  "
                  f"cached {row['cached']['ppl_mean']:.4f} ({100 * row['rel_diff']:+.2f}%)  "
                  f"prune {row['exact']['prune_s']:.1f}s vs {row['cached']['prune_s']:.2f}s", flush=True)
    summary(args)


def summary(args) -> dict:
    out = Path(args.out)
    rows = read(out)
    head = next(r for r in rows if r.get("dense"))
    cells = [r for r in rows if "config" in r]
    by_sparsity = {}
    for r in cells:
        by_sparsity.setdefault(r["sparsity"], []).append(r)
    result = {
        "conditions": {"model": "shipped demo model (tasks.demo_model)", **DEMO, "eval": EVAL, "split": "valid",
                       "objective": "ppl.mean", "threads": head["threads"], "load_median": statistics.median(r["load"] for r in cells)},
        "dense_ppl_mean": head["ppl_mean"], "cache": head["cache"],
        "prune_s_median": {s: statistics.median(r[s]["prune_s"] for r in cells) for s in ("exact", "cached")},
        "eval_s_median": statistics.median(r["exact"]["eval_s"] for r in cells),
        "cells": cells,
        "per_sparsity": {s: {"agreement_mean": statistics.mean(r["agreement"] for r in rs),
                             "agreement_block0_min": min(r["agreement_per_block"]["0"] for r in rs),
                             "rel_diff_mean": statistics.mean(r["rel_diff"] for r in rs),
                             "rel_diff_max_abs": max(abs(r["rel_diff"]) for r in rs)} for s, rs in sorted(by_sparsity.items())},
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def markdown(res: dict) -> str:
    c, t = res["conditions"], res["prune_s_median"]
    lines = [f"Demo model, calibration {c['calib']} {c['nsamples']} x {c['seqlen']} (seed {c['seed']}), valid ppl.mean over "
             f"{','.join(c['eval'])} (dense {res['dense_ppl_mean']:.3f}); {c['threads']} thread, load {c['load_median']:.1f}. "
             f"Prune: exact {t['exact']:.1f} s, from the cache {t['cached']:.2f} s (medians); cache: "
             f"{res['cache']['bytes'] / 2**20:.1f} MiB, built in {res['cache']['build_s']:.1f} s.", "",
             "| config | sparsity | mask agreement | block 0 | valid ppl.mean exact | from the cache | difference |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(res["cells"], key=lambda r: (r["sparsity"], r["config"])):
        lines.append(f"| {r['config']} | {r['sparsity']} | {r['agreement']:.4f} | {r['agreement_per_block']['0']:.4f} | "
                     f"{r['exact']['ppl_mean']:.3f} | {r['cached']['ppl_mean']:.3f} | {100 * r['rel_diff']:+.2f}% |")
    return "\n".join(lines)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sparsities", default="0.5,0.6,0.7")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "screen_approximation.jsonl"))
    p.add_argument("--summary", action="store_true", help="only the tables, from --out")
    args = p.parse_args()
    summary(args) if args.summary else run(args)


if __name__ == "__main__":
    main()
