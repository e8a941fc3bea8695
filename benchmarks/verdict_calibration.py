"""Is the search's verdict calibrated? Two checks on the shipped demo model (issue 28).

    python benchmarks/verdict_calibration.py aa [--repeats 20] [--per-arm 6]     # the A/A experiment
    python benchmarks/verdict_calibration.py coverage                            # on the M-Wanda ablation
    python benchmarks/verdict_calibration.py --summary                           # both, from the result files

1. **A/A.** The demo's `wanda·uniform` baseline (Wanda at 65%, 64 x 128 calibration tokens over
   en, sw, zh; test perplexity over en, sw, zh, de, ru) is pruned with 2 x per-arm x repeats distinct
   calibration seeds (each seed once). Repeat r compares arm A (seeds of block 2r) with arm A' (block
   2r+1): the same setting, so every "better" or "worse" is a false verdict. Each comparison runs the
   confirmation's own rule (`orchestrator.search.confirm.verdict`: paired t-test over the test seeds,
   two-level bootstrap interval over seeds and test windows, both must agree). The false rate at level
   0.05 should be <= 5%; it is printed for the independent repeats and, more precisely, for 2000 random
   disjoint splits of the same pool of pruned models (not independent of one another: a check of
   the estimate, not a replacement).
2. **Coverage.** On the M-Wanda ablation (`benchmarks/mwanda_ablation.py`, with its per-window losses):
   for each configuration against `wanda` at each sparsity, paired over the calibration seeds, is the
   effect measured on `valid` inside the 95% interval of the `test` effect? The valid text is other
   text from the same sources, so a test interval that covers the evaluation text should hold the
   valid effect in >= 90% of the comparisons (it shares the seeds; only the text differs). The
   seed-only interval (a t interval over seeds) is printed beside it, for contrast.

Per-seed results (per-window losses) are appended to --out as each seed finishes: an interrupted
run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTING = dict(method="wanda", sparsity="0.65", calib="en,sw,zh", nsamples=64, seqlen=128)
EVAL = ["en", "sw", "zh", "de", "ru"]
FIRST_SEED = 1000  # far from the demo's search (0) and confirmation seeds


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def losses_of(row: dict, split: str) -> dict:
    """{lang: (nll per window, tokens per window)} of a result row."""
    return {lang: (v["nll"], v["tokens"]) for lang, v in row[f"{split}_losses"].items()}


def collect(args) -> None:
    from mwanda_ablation import evaluate  # both splits with per-window losses, as the ablation records them
    from tasks.api import PruneSpec, load_model, prune, restore, snapshot
    from tasks.demo_model import DemoConfig, demo_model_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = list(range(FIRST_SEED, FIRST_SEED + 2 * args.per_arm * args.repeats))
    done = {r["seed"] for r in read(out)}
    todo = [s for s in seeds if s not in done]
    print(f"A/A: {len(seeds)} calibration seeds of {SETTING}, {len(seeds) - len(todo)} already in {out}", flush=True)
    if not todo:
        return
    path = str(demo_model_path(DemoConfig(), progress=True))
    model, tok = load_model(path)
    dense = snapshot(model)
    for k, seed in enumerate(todo, 1):
        t0 = time.perf_counter()
        prune(model, tok, PruneSpec(model=path, data="builtin", seed=seed, **SETTING), progress=False)
        row = {"seed": seed, **SETTING, **evaluate(model, tok, EVAL, SETTING["seqlen"])}
        restore(model, dense)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{k}/{len(todo)}] seed {seed}: test ppl.mean {geo(row['test'].values()):.4f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)


def geo(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def aa_summary(path: Path, per_arm: int, level: float) -> dict:
    from orchestrator.search.confirm import verdict

    rows = sorted(read(path), key=lambda r: r["seed"])
    n_rep = len(rows) // (2 * per_arm)
    positions = list(range(per_arm))  # seed i of arm A is paired with seed i of arm A', as the confirmation pairs

    def one(a_rows, b_rows, _):
        """The confirmation's own verdict (orchestrator.search.confirm.verdict) of A against A'."""
        tested = [{"label": arm, "test": {i: geo(r["test"].values()) for i, r in enumerate(rs)}}
                  for arm, rs in (("A", a_rows), ("A'", b_rows))]
        losses = {"A": [losses_of(r, "test") for r in a_rows], "A'": [losses_of(r, "test") for r in b_rows]}
        return verdict(tested, "ppl.mean", "minimize", positions, level, losses)["vs"][0]

    independent = [one(rows[2 * per_arm * r: 2 * per_arm * r + per_arm], rows[2 * per_arm * r + per_arm: 2 * per_arm * (r + 1)], r)
                   for r in range(n_rep)]
    rng = random.Random(0)
    resampled = []
    for i in range(2000 if len(rows) >= 2 * per_arm else 0):
        pick = rng.sample(rows, 2 * per_arm)
        resampled.append(one(pick[:per_arm], pick[per_arm:], i))

    def rates(results):
        n = len(results) or 1
        return {"n": len(results),
                "false_verdict": sum(x["verdict"] != "no significant difference" for x in results) / n,
                "t_test_alone": sum(x["p"] < level for x in results) / n,
                "interval_alone": sum(not (x["low"] <= 0 <= x["high"]) for x in results) / n,
                "median_width_pct": sorted(x["high"] - x["low"] for x in results)[len(results) // 2] if results else None}

    out = {"seeds": len(rows), "per_arm": per_arm, "level": level, "independent": rates(independent),
           "resampled_splits": rates(resampled)}
    i, s = out["independent"], out["resampled_splits"]
    print(f"A/A (wanda·uniform against itself, {per_arm} + {per_arm} disjoint seeds, level {level:g}):")
    print(f"  {i['n']} independent repeats: false verdicts {i['false_verdict']:.1%} (t-test alone {i['t_test_alone']:.1%}, "
          f"interval alone {i['interval_alone']:.1%}); median interval width {i['median_width_pct']:.2f} points")
    print(f"  {s['n']} random disjoint splits of the {len(rows)} seeds: false verdicts {s['false_verdict']:.1%} "
          f"(t-test alone {s['t_test_alone']:.1%}, interval alone {s['interval_alone']:.1%})")
    return out


def coverage_summary(path: Path, level: float) -> dict:
    """Valid effect inside the test interval, for every ablation configuration against wanda."""
    from scipy import stats

    from orchestrator.search.verdict_stats import bootstrap_diff

    rows = [r for r in read(path) if r["config"] != "dense" and "test_losses" in r]
    if not rows:
        print(f"coverage: no rows with per-window losses in {path}: run benchmarks/mwanda_ablation.py first")
        return {}
    by = {}
    for r in rows:
        by.setdefault((r["config"], r["sparsity"]), {})[r["seed"]] = r
    out = []
    for (config, sparsity), cells in sorted(by.items()):
        base = by.get(("wanda", sparsity), {})
        if config == "wanda" or not base:
            continue
        seeds = sorted(set(cells) & set(base))
        if len(seeds) < 2:
            continue
        a, b = [cells[s] for s in seeds], [base[s] for s in seeds]
        d_valid = [math.log(geo(x["valid"].values()) / geo(y["valid"].values())) for x, y in zip(a, b)]
        d_test = [math.log(geo(x["test"].values()) / geo(y["test"].values())) for x, y in zip(a, b)]
        valid = 100 * math.expm1(sum(d_valid) / len(d_valid))
        boot = bootstrap_diff([losses_of(x, "test") for x in a], [losses_of(y, "test") for y in b], level=1 - level)
        m, se = sum(d_test) / len(d_test), stats.sem(d_test) if len(set(d_test)) > 1 else 0.0
        half = stats.t.ppf(1 - level / 2, len(d_test) - 1) * se
        seed_only = (100 * math.expm1(m - half), 100 * math.expm1(m + half))
        out.append({"config": config, "sparsity": sparsity, "seeds": len(seeds), "valid_pct": valid,
                    "test_pct": boot["diff_pct"], "interval": [boot["low_pct"], boot["high_pct"]], "seed_only": seed_only,
                    "inside": boot["low_pct"] <= valid <= boot["high_pct"],
                    "inside_seed_only": seed_only[0] <= valid <= seed_only[1]})
    n = len(out)
    share = sum(x["inside"] for x in out) / n
    share_seed = sum(x["inside_seed_only"] for x in out) / n
    print(f"coverage: the valid effect is inside the test effect's {1 - level:.0%} interval (seeds and text) in "
          f"{sum(x['inside'] for x in out)} of {n} ablation comparisons ({share:.0%}); inside the seed-only t interval "
          f"in {sum(x['inside_seed_only'] for x in out)} of {n} ({share_seed:.0%})")
    for x in out:
        print(f"  {x['config']:>16s} vs wanda at {x['sparsity']}: valid {x['valid_pct']:+.2f}%, test {x['test_pct']:+.2f}% "
              f"[{x['interval'][0]:+.2f}, {x['interval'][1]:+.2f}] (seeds only [{x['seed_only'][0]:+.2f}, "
              f"{x['seed_only'][1]:+.2f}]){'' if x['inside'] else '  OUTSIDE'}")
    return {"comparisons": n, "inside": share, "inside_seed_only": share_seed, "rows": out}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=["aa", "coverage"], help="collect the A/A seeds, or only summarise coverage")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--per-arm", type=int, default=6, help="test seeds per arm (the confirmation's default)")
    p.add_argument("--level", type=float, default=0.05)
    p.add_argument("--out", default=str(RESULTS / "verdict_calibration_aa.jsonl"))
    p.add_argument("--ablation", default=str(RESULTS / "mwanda_ablation.jsonl"))
    p.add_argument("--summary", action="store_true", help="only the summaries, from the result files")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.what == "aa" and not args.summary:
        collect(args)
    result = {}
    if args.what in (None, "aa"):
        result["aa"] = aa_summary(Path(args.out), args.per_arm, args.level)
    if args.what in (None, "coverage"):
        result["coverage"] = coverage_summary(Path(args.ablation), args.level)
    (RESULTS / "verdict_calibration.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
