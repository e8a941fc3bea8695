"""Does a cheap screen rank a search's trials as the full prune and evaluation do? (issue 29)

    python benchmarks/search_fidelity.py [--configs 50] [--seed 0] [--ks 2,4,8] [--threads 1]
                                         [--out benchmarks/results/search_fidelity.jsonl]
    python benchmarks/search_fidelity.py --summary        # the tables from the results file only

Random configurations of the `mwanda_full` space (mix, M-Wanda coefficients, schedule; Optuna's
RandomSampler seeded by --seed, through search_spaces.space.sample as a search samples them) on the
shipped demo model at the demo's settings: M-Wanda at 65%, calibration en,sw,zh, 64 x 128 tokens,
seed 0; objective ppl.mean (geometric mean of per-language perplexity) on the valid split over
en,sw,zh,de,ru. Each configuration is pruned twice, each pruned model evaluated once:

- statistics `exact`: the sequential prune (tasks.api.prune); `cached`: masks for every block at once
  from the dense model's per-language statistics (tasks.api.prune_from_cache);
- evaluation: every valid window of each language (its NLL per window), and on each language's first
  max(ks) windows the KL divergence to the dense model's next-token distributions (one pass:
  tasks.evaluation.kl.window_nll_kl).

Full fidelity is (exact, ppl on all windows). A screen is (statistics, evaluation) with evaluation
ppl@k (ppl.mean over each language's first k windows), kl@k (mean token KL over them, averaged over
languages) or ppl@all. Per screen: Kendall's tau (tau-b) of its objective against the full one over
the configurations, with a bootstrap 95% interval, and the recall of the full top 10% among the
screen's top 20%. Gate: tau >= 0.7 and recall >= 0.9. Costs are measured per configuration (prune,
evaluation of all windows); a screen's evaluation cost is that of its windows' share.

One JSON line per configuration is appended to --out as it finishes (the first line: the dense
model), so a run resumes where it stopped; --summary recomputes everything from the file and writes
<out>.json and <out>.md (search_fidelity.json / .md beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

EVAL = ["en", "sw", "zh", "de", "ru"]
CALIB = ["en", "sw", "zh"]
DEMO = dict(method="mwanda", sparsity="0.65", nsamples=64, seqlen=128, seed=0)  # orchestrator/cli/demo.py DEFAULTS
GATE = {"tau": 0.7, "recall": 0.9}
TOP, SCREEN_TOP = 0.10, 0.20


def configurations(n: int, seed: int, n_blocks: int) -> list[dict]:
    """The first n points of a seeded random search of mwanda_full, as prune arguments."""
    import optuna

    from search_spaces.space import PROFILE, load_space, sample
    from tasks.data.langs import canonical_mix

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("mwanda_full")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        point = sample(trial, space, CALIB, float(DEMO["sparsity"]), n_blocks)
        schedule = point.profile if point.schedule == PROFILE else point.schedule
        out.append({"config": i, "params": trial.params, "calib": canonical_mix(point.mix), "schedule": schedule, "hp": point.hp})
    return out


def evaluate(model, windows, refs, batch_size: int = 8) -> dict:
    from tasks.evaluation.kl import window_nll_kl

    t0 = time.perf_counter()
    nll, kl = {}, {}
    for lang, w in windows.items():
        n, k = window_nll_kl(model, w, refs[lang], batch_size)
        nll[lang], kl[lang] = n.tolist(), k.tolist()
    return {"nll": nll, "kl": kl, "eval_s": time.perf_counter() - t0}


def run(args) -> None:
    import torch

    from tasks.api import PruneSpec, load_model, prune, prune_from_cache, restore, snapshot, stats_cache
    from tasks.data.calibration import eval_windows
    from tasks.data.sources import get_source
    from tasks.demo_model import DemoConfig, demo_model_path
    from tasks.errors import UserError
    from tasks.evaluation.kl import reference_log_probs
    from tasks.models import find_blocks

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = read(out)
    done = {r["config"] for r in rows if "config" in r}
    path = str(demo_model_path(DemoConfig(), progress=True))
    model, tok = load_model(path)
    dense = snapshot(model)
    kmax = max(args.ks)
    windows = {l: eval_windows(get_source("builtin"), tok, l, DEMO["seqlen"], None, "valid") for l in EVAL}
    refs = {l: reference_log_probs(model, w[:kmax]) for l, w in windows.items()}
    spec_of = lambda c: PruneSpec(model=path, calib=c["calib"], schedule=c["schedule"], hp=c["hp"], **DEMO)  # noqa: E731
    if not any(r.get("dense") for r in rows):  # the cache's build time, measured in a fresh folder
        t0 = time.perf_counter()
        cache = stats_cache(model, tok, spec_of({"calib": ",".join(CALIB), "schedule": "uniform", "hp": {}}), root=tempfile.mkdtemp())
        append(out, {"dense": True, **evaluate(model, windows, refs), "ks": args.ks, "windows": {l: len(w) for l, w in windows.items()},
                     "cache": {**cache.summary(), "first_call_s": time.perf_counter() - t0}, "threads": args.threads})
    cache = stats_cache(model, tok, spec_of({"calib": ",".join(CALIB), "schedule": "uniform", "hp": {}}))
    configs = configurations(args.configs, args.seed, len(find_blocks(model)[1]))
    todo = [c for c in configs if c["config"] not in done]
    print(f"{len(configs)} configurations, {len(configs) - len(todo)} already in {out}", flush=True)
    for c in todo:
        t_start, row = time.perf_counter(), {**c, "load": os.getloadavg()[0]}
        try:
            masks = {}
            for stats, fn in (("exact", lambda s: prune(model, tok, s, progress=False)),
                              ("cached", lambda s: prune_from_cache(model, tok, s, cache))):
                restore(model, dense)
                t0 = time.perf_counter()
                res = fn(spec_of(c))
                row[stats] = {"prune_s": time.perf_counter() - t0, **evaluate(model, windows, refs)}
                masks[stats] = res.masks
        except UserError as e:  # a configuration the engine refuses: a search's FAIL, kept out of the ranking
            row["error"] = str(e)
        finally:
            restore(model, dense)
        if "error" not in row:
            same = sum(int((masks["exact"][k] == masks["cached"][k]).sum()) for k in masks["exact"])
            row["mask_agreement"] = same / sum(m.numel() for m in masks["exact"].values())
        append(out, row)
        full = objective(row["exact"], None) if "exact" in row else float("nan")
        print(f"config {c['config']:3d}  {c['calib']:<28} {str(c['schedule'])[:8]:<8} full {full:8.4f}  "
              f"agree {row.get('mask_agreement', float('nan')):.4f}  {time.perf_counter() - t_start:6.1f}s", flush=True)
    summary(args)


# ---------------------------------------------------------------- the summary, from the results file only


def objective(ev: dict, k: int | None, kind: str = "ppl") -> float:
    """ppl.mean over the languages' first k windows (None: all), or their mean token KL (kind "kl")."""
    per = []
    for lang in EVAL:
        vals = ev["kl" if kind == "kl" else "nll"][lang][:k]
        per.append(sum(vals) / (len(vals) * (DEMO["seqlen"] - 1)))  # mean per predicted token
    return sum(per) / len(per) if kind == "kl" else math.exp(sum(per) / len(per))


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def recall(full, screen) -> float:
    """Share of the full-fidelity top TOP (lowest objective) among the screen's top SCREEN_TOP."""
    n = len(full)
    best = set(sorted(range(n), key=full.__getitem__)[:max(1, math.ceil(TOP * n))])
    picked = set(sorted(range(n), key=screen.__getitem__)[:max(1, math.ceil(SCREEN_TOP * n))])
    return len(best & picked) / len(best)


def bootstrap_tau(full, screen, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    import numpy as np

    rng, n = np.random.default_rng(seed), len(full)
    f, s = np.asarray(full), np.asarray(screen)
    taus = [kendall(f[i], s[i]) for i in (rng.integers(0, n, n) for _ in range(reps))]
    return float(np.nanpercentile(taus, 2.5)), float(np.nanpercentile(taus, 97.5))


def screens(ks: list[int]) -> list[tuple[str, str, int | None, str]]:
    """(name, statistics, k, kind) of every candidate screen."""
    out = []
    for stats in ("exact", "cached"):
        out += [(f"{stats} ppl@{k}", stats, k, "ppl") for k in ks] + [(f"{stats} kl@{k}", stats, k, "kl") for k in ks]
        out.append((f"{stats} ppl@all", stats, None, "ppl"))
    return [s for s in out if s[0] != "exact ppl@all"]  # that one is full fidelity itself


def summary(args) -> dict:
    import statistics

    out = Path(args.out)
    rows = read(out)
    head = next(r for r in rows if r.get("dense"))
    ks, n_windows = head["ks"], head["windows"]
    ok = [r for r in rows if "config" in r and "error" not in r]
    full = [objective(r["exact"], None) for r in ok]
    eval_s = statistics.median(r["exact"]["eval_s"] for r in ok)
    prune_s = {s: statistics.median(r[s]["prune_s"] for r in ok) for s in ("exact", "cached")}
    table = []
    for name, stats, k, kind in screens(ks):
        vals = [objective(r[stats], k, kind) for r in ok]
        share = 1.0 if k is None else sum(min(k, n) for n in n_windows.values()) / sum(n_windows.values())
        tau, rec = kendall(full, vals), recall(full, vals)
        table.append({"screen": name, "tau": tau, "tau_95": bootstrap_tau(full, vals), "recall": rec,
                      "trial_s": prune_s[stats] + share * eval_s, "gate": tau >= GATE["tau"] and rec >= GATE["recall"]})
    rel = [objective(r["cached"], None) / objective(r["exact"], None) - 1 for r in ok]
    result = {
        "conditions": {"model": "shipped demo model (tasks.demo_model)", **DEMO, "calib": CALIB, "eval": EVAL, "split": "valid",
                       "space": "mwanda_full", "sampler": "optuna RandomSampler", "seed": args.seed, "ks": ks,
                       "valid_windows": n_windows, "threads": head.get("threads"),
                       "load_median": statistics.median(r["load"] for r in ok) if ok else None},
        "configurations": len(ok), "failed": sum(1 for r in rows if "error" in r), "gate": GATE,
        "full_trial_s": prune_s["exact"] + eval_s, "prune_s": prune_s, "eval_all_s": eval_s,
        "cache": {k: head["cache"][k] for k in ("bytes", "build_s")},
        "cached_vs_exact": {"mask_agreement_median": statistics.median(r["mask_agreement"] for r in ok),
                            "mask_agreement_min": min(r["mask_agreement"] for r in ok),
                            "objective_rel_diff_median": statistics.median(rel), "objective_rel_diff_max_abs": max(map(abs, rel))},
        "screens": table,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def markdown(res: dict) -> str:
    c = res["conditions"]
    lines = [f"{res['configurations']} random `mwanda_full` configurations ({res['failed']} refused), demo model, "
             f"{c['sparsity']} sparsity, calibration {','.join(c['calib'])} {c['nsamples']} x {c['seqlen']}, objective valid ppl.mean "
             f"over {','.join(c['eval'])}; full fidelity = exact prune, all valid windows ({res['full_trial_s']:.1f} s a trial here, "
             f"{c['threads']} thread, load {c['load_median']:.1f}).", "",
             "| screen | Kendall tau [95% CI] | recall top10% in top20% | trial s (est.) | gate (tau >= 0.7, recall >= 0.9) |",
             "|---|---|---|---|---|"]
    for s in res["screens"]:
        lo, hi = s["tau_95"]
        lines.append(f"| {s['screen']} | {s['tau']:.2f} [{lo:.2f}, {hi:.2f}] | {s['recall']:.2f} | {s['trial_s']:.1f} | "
                     f"{'met' if s['gate'] else 'missed'} |")
    return "\n".join(lines)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_fidelity.jsonl"))
    p.add_argument("--summary", action="store_true", help="only the tables, from --out")
    args = p.parse_args()
    summary(args) if args.summary else run(args)


if __name__ == "__main__":
    main()
