"""Does a search that screens its trials find as good a pruned model as plain TPE for a tenth of the compute? (issue 29)

    python benchmarks/search_efficiency.py [--seeds 0-19] [--settings full,screen] [--trials 40] [--budget 0.5]
                                           [--threads 1] [--out benchmarks/results/search_efficiency.jsonl]
    python benchmarks/search_efficiency.py --summary   # table, JSON and figure from the results file only

The search a file with `space: mwanda_mix`, `method: mwanda`, `sparsity: 0.65` runs on the shipped demo
model at the demo's settings (calibration en,sw,zh, 64 x 128 tokens, seed 0; objective valid ppl.mean over
en,sw,zh,de,ru, every window), one trial at a time in this process with the search's pieces (file parsing,
`search.cells.trial_cell`, `search.sampling.build_sampler` seeded by the search seed, `search.fidelity`);
no Ray or MLflow. Per search seed, each setting is a run of its own (its own study):

- `full`: plain TPE, --trials trials, each the exact sequential prune (tasks.api.prune) + every valid window;
- `screen10` (promote 0.1, `fidelity:`'s default), `screen` (0.25), `screen50` (0.5), 8 windows: a trial is screened first
  (tasks.api.prune_from_cache, ppl.mean over each language's first 8 valid windows, reported as step 0);
  if `fidelity.promoted` it runs at full fidelity and is told that value (COMPLETE), else told PRUNED.
  The run pays the statistics cache's build (a dense pass per calibration language), as a fresh search
  does, and stops when its compute reaches --budget x that of --trials plain trials.

Compute is counted (the machine is shared): after every trial a run records its operations (exact and
cached prunes, cache languages built, screen and full valid windows); the unit costs are measured in
the same process (alternating repeats, --threads threads, load recorded) and the summary converts with
the medians of every measurement in the file; wall times are recorded too. A run's pick at a compute
point: its best COMPLETE trial by valid; regret: pick / best full-fidelity valid of any run - 1, in %;
curves vs compute as a share of the mean of --trials plain trials, bootstrap 95% bands over seeds.
Target: the default (`screen10`) at 1/10 no worse than `full` at 1 (upper 95% bound of the per-seed paired difference
<= 0); every paired comparison (each screened setting against `full` at 1 and at the same share, at 1/10, 1/5, 1/3
and 1/2) also gets the paired t-test's p over seeds, adjusted by Holm over all of them. The picks (full: at 1;
screened: at 1/10 and 1/3) are pruned exactly on calibration seeds 101 and 102 and measured on the whole test split.
One JSON line per run is appended to --out (a rerun skips done runs); the summary writes search_efficiency.{json,md,png} beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

LANGS = ["en", "sw", "zh", "de", "ru"]
CALIB = ["en", "sw", "zh"]
SETTINGS = {"full": None, "screen": 0.25, "screen50": 0.5, "screen10": 0.1}  # promote fraction (None: every trial at full fidelity)
POINTS = {"1/10": 0.1, "1/5": 0.2, "1/3": 1 / 3, "1/2": 0.5, "1": 1.0}
PAIRED = ("1/10", "1/5", "1/3", "1/2")  # shares where a screened run is compared with full, paired by seed
PICKS = {"full": ["1"], "screen": ["1/10", "1/3"], "screen50": ["1/10", "1/3"], "screen10": ["1/10", "1/3"]}  # re-evaluated on fresh seeds
RESEEDS = [101, 102]
OPS = ["exact", "cached", "cache_lang", "win_screen", "win_full"]  # unit-cost names: what a run counts


def search_config(seed: int, promote: float | None):
    from orchestrator.search.file import parse_search

    raw = {"name": f"eff-{seed}", "model": "demo", "method": "mwanda", "sparsity": 0.65, "seed": 0,
           "calibration": {"languages": CALIB, "nsamples": 64, "seqlen": 128},
           "evaluation": {"ppl": {"languages": LANGS, "seqlen": 128}}, "space": "mwanda_mix",
           "objectives": [{"metric": "ppl.mean"}], "n_trials": 1000, "parallel": 1, "baselines": False, "confirm": False,
           "fidelity": False if promote is None else {"promote": promote}, "sampler_seed": seed,
           "storage": "sqlite:////tmp/unused.db"}
    return parse_search(raw, Path.cwd())


def cost(ops: dict, units: dict) -> float:
    return sum(ops[k] * units[k] for k in OPS)


class Bench:
    def __init__(self, threads: int):
        import torch

        from orchestrator.search.fidelity import DEFAULTS
        from tasks.api import load_model, snapshot, stats_cache
        from tasks.data.calibration import eval_windows
        from tasks.data.sources import get_source
        from tasks.demo_model import demo_model_path

        torch.set_num_threads(threads)
        self.path, self.k = str(demo_model_path()), DEFAULTS["windows"]
        self.model, self.tok = load_model(self.path)
        self.dense = snapshot(self.model)
        n = {s: {l: len(eval_windows(get_source("builtin"), self.tok, l, 128, None, s)) for l in LANGS} for s in ("valid", "test")}
        self.n_valid, self.n_test = sum(n["valid"].values()), sum(n["test"].values())
        self.n_screen = sum(min(self.k, v) for v in n["valid"].values())
        cfg, space = search_config(0, None)
        self.spec0 = self.spec(cfg, space, None)
        self.cache = stats_cache(self.model, self.tok, self.spec0)  # on disk once; every screened run is charged its build

    def spec(self, cfg, space, trial):
        import optuna

        from orchestrator.engine.cells import spec_of
        from orchestrator.search.cells import trial_cell

        cfg.model = self.path
        if trial is None:  # a fixed point: the uniform mix, M-Wanda's defaults
            trial = optuna.trial.FixedTrial({"mix.en": 0.5, "mix.sw": 0.5, "mix.zh": 0.5, "lambda_var": 1.0, "lambda_prob": 0.5})
        return spec_of(trial_cell(cfg, space, trial).key)

    def ppl(self, windows: int | None, split: str = "valid") -> float:
        from tasks.api import perplexity, ppl_metrics

        return ppl_metrics(perplexity(self.model, self.tok, LANGS, "builtin", 128, windows, split=split))["ppl.mean"]

    def pruned(self, spec, exact: bool) -> None:
        from tasks.api import prune, prune_from_cache, restore

        restore(self.model, self.dense)
        prune(self.model, self.tok, spec, progress=False) if exact else prune_from_cache(self.model, self.tok, spec, self.cache)

    def units(self, reps: int) -> dict:
        """Each unit's seconds, `reps` alternating repeats: {name: [seconds, ...]} (windows: per window)."""
        from tasks.api import restore, stats_cache

        out = {k: [] for k in OPS}

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        for _ in range(reps):
            out["exact"].append(timed(lambda: self.pruned(self.spec0, True)))
            out["win_full"].append(timed(lambda: self.ppl(None)) / self.n_valid)
            out["cached"].append(timed(lambda: self.pruned(self.spec0, False)))
            out["win_screen"].append(timed(lambda: self.ppl(self.k)) / self.n_screen)
            restore(self.model, self.dense)
            with tempfile.TemporaryDirectory() as root:  # a fresh build, one language at a time
                for lang in CALIB:
                    out["cache_lang"].append(timed(lambda: stats_cache(self.model, self.tok, self.spec0, [lang], root=root)))
        return out

    def run(self, seed: int, setting: str, trials: int, budget: float, units: dict) -> dict:
        import optuna
        from optuna.trial import TrialState

        from orchestrator.search.fidelity import promoted
        from orchestrator.search.sampling import build_sampler
        from tasks.errors import UserError

        promote = SETTINGS[setting]
        cfg, space = search_config(seed, promote)
        study = optuna.create_study(sampler=build_sampler(cfg.sampler, cfg.sampler_seed))
        ops = {k: 0 for k in OPS}
        ops["cache_lang"] = len(CALIB) if promote else 0
        plain = trials * (units["exact"] + self.n_valid * units["win_full"])
        recs, specs, screened, t0, load0 = [], {}, [], time.perf_counter(), os.getloadavg()[0]
        while len(recs) < trials if promote is None else cost(ops, units) < budget * plain:
            trial = study.ask(space.distributions(list(cfg.calibration.languages)))
            rec = {"n": trial.number, "params": trial.params, "state": "COMPLETE"}
            try:
                specs[trial.number] = spec = self.spec(cfg, space, trial)
                if promote:
                    self.pruned(spec, False)
                    rec["screen"] = self.ppl(self.k)
                    ops["cached"], ops["win_screen"] = ops["cached"] + 1, ops["win_screen"] + self.n_screen
                    trial.report(rec["screen"], 0)
                    screened.append(rec["screen"])
                    if not promoted(rec["screen"], screened, promote):
                        rec["state"] = "PRUNED"
                if rec["state"] == "COMPLETE":
                    self.pruned(spec, True)
                    rec["valid"] = self.ppl(None)
                    ops["exact"], ops["win_full"] = ops["exact"] + 1, ops["win_full"] + self.n_valid
                    study.tell(trial, rec["valid"])
                else:
                    study.tell(trial, state=TrialState.PRUNED)
            except UserError as e:  # a configuration the engine refuses: the search's FAIL
                rec.update(state="FAIL", error=str(e))
                study.tell(trial, state=TrialState.FAIL)
            recs.append({**rec, "ops": dict(ops), "wall_s": time.perf_counter() - t0})
        row = {"setting": setting, "seed": seed, "promote": promote, "windows": self.k if promote else None,
               "trials": recs, "wall_s": time.perf_counter() - t0, "load": [load0, os.getloadavg()[0]], "reeval": {}}
        done = {}
        for name in PICKS[setting]:  # the pick at that share of the budget, re-run on fresh calibration seeds
            pick = best([r for r in recs if cost(r["ops"], units) <= POINTS[name] * plain * (1 + 1e-9)])
            if pick is not None and pick["n"] not in done:
                done[pick["n"]] = {"n": pick["n"], "test": {s: self.reeval(specs[pick["n"]], s) for s in RESEEDS}}
            row["reeval"][name] = done.get(pick and pick["n"])
        return row

    def reeval(self, spec, seed: int) -> float:
        from tasks.api import PruneSpec

        self.pruned(PruneSpec(**{**spec.to_dict(), "seed": seed}), True)
        return self.ppl(None, "test")


def best(recs: list[dict]) -> dict | None:
    done = [r for r in recs if r["state"] == "COMPLETE"]
    return min(done, key=lambda r: r["valid"]) if done else None


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def seeds_arg(s: str) -> list[int]:
    out = []
    for part in s.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def run(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.threads)
    samples = bench.units(args.reps)
    units = {k: statistics.median(v) for k, v in samples.items()}
    append(out, {"units": samples, "threads": args.threads, "load": os.getloadavg()[0], "n_valid": bench.n_valid,
                 "n_screen": bench.n_screen, "n_test": bench.n_test, "cache_bytes": bench.cache.summary()["bytes"]})
    print("unit costs (s):", {k: round(v, 4) for k, v in units.items()}, flush=True)
    done = {(r["setting"], r["seed"]) for r in read(out) if "setting" in r}
    for seed in seeds_arg(args.seeds):  # interleaved: every setting of a seed before the next seed
        for setting in args.settings.split(","):
            if (setting, seed) in done:
                continue
            row = bench.run(seed, setting, args.trials, args.budget, units)
            append(out, {**row, "budget_trials": args.trials})
            b = best(row["trials"])
            print(f"{setting:<8} seed {seed:3d}: {len(row['trials'])} trials, best valid {b and b['valid']:.4f}, "
                  f"compute {cost(row['trials'][-1]['ops'], units):.0f} s, wall {row['wall_s']:.0f} s", flush=True)
    summary(args)


# ---------------------------------------------------------------- the summary, from the results file only


def ci(xs, reps: int = 2000) -> dict:
    """Mean and bootstrap 95% interval over seeds."""
    import numpy as np

    x = np.asarray(xs, float)
    means = x[np.random.default_rng(0).integers(0, len(x), (reps, len(x)))].mean(1)
    return {"mean": float(x.mean()), "lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5))}


def paired_ci(diffs) -> dict:
    """`ci` of per-seed paired differences, with the paired t-test's two-sided p of a zero mean (as the
    confirmation's verdict; 1 where every difference is 0: the two picks were the same)."""
    from scipy import stats

    p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {**ci(diffs), "p": 1.0 if math.isnan(p) else p}


def holm_over(paired: dict) -> int:
    """Holm's adjustment over every paired comparison in the summary (one family: each setting against
    full, at 1 and at the same share, at each share); writes `p_holm` beside each `p`; returns the family's size."""
    from orchestrator.search.verdict_stats import holm

    family = [t for row in paired.values() for vs in row.values() for t in vs.values() if t]
    for t, q in zip(family, holm([t["p"] for t in family])):
        t["p_holm"] = q
    return len(family)


def summary(args) -> dict:
    import numpy as np

    out, rows = Path(args.out), read(Path(args.out))
    heads, runs = [r for r in rows if "units" in r], [r for r in rows if "setting" in r]
    units = {k: statistics.median(x for h in heads for x in h["units"][k]) for k in OPS}
    n_plain = runs[0]["budget_trials"]
    budget = statistics.mean(cost(r["trials"][-1]["ops"], units) for r in runs if r["setting"] == "full")
    top = min(t["valid"] for r in runs for t in r["trials"] if t["state"] == "COMPLETE")

    def regret(run_, x: float) -> float:  # NaN: no full-fidelity trial yet, or the run stopped before x
        if cost(run_["trials"][-1]["ops"], units) < x * budget * (1 - 1e-6):
            return math.nan
        pick = best([t for t in run_["trials"] if cost(t["ops"], units) <= x * budget * (1 + 1e-9)])
        return math.nan if pick is None else 100 * (pick["valid"] / top - 1)

    by = {s: sorted((r for r in runs if r["setting"] == s), key=lambda r: r["seed"]) for s in SETTINGS}
    by = {s: v for s, v in by.items() if v}
    table, curves, paired, grid = {}, {}, {}, np.linspace(0, 1, 201)
    for s, rs in by.items():
        table[s] = {}
        for name, x in POINTS.items():
            v = [regret(r, x) for r in rs]
            table[s][name] = {"seeds": sum(not math.isnan(a) for a in v), "of": len(v), **({} if any(map(math.isnan, v)) else ci(v))}
        m = np.array([[regret(r, x) for x in grid] for r in rs])
        curves[s] = [{"x": float(x), **ci(m[:, i])} for i, x in enumerate(grid) if not np.isnan(m[:, i]).any()]
        full = {r["seed"]: r for r in by.get("full", [])}
        for vs, at in (("full_at_1", lambda x: 1.0), ("full_at_x", lambda x: x)):  # the target; then at equal compute
            d = {n: [regret(r, POINTS[n]) - regret(full[r["seed"]], at(POINTS[n])) for r in rs if r["seed"] in full]
                 for n in PAIRED}
            paired.setdefault(s, {})[vs] = {n: None if not v or any(map(math.isnan, v)) else paired_ci(v) for n, v in d.items()}
    paired.pop("full", None)
    family = holm_over(paired)
    last = {s: [r["trials"][-1]["ops"] for r in rs] for s, rs in by.items()}
    res = {"conditions": {"model": "shipped demo model", "method": "mwanda", "sparsity": 0.65, "space": "mwanda_mix",
                          "calibration": f"{','.join(CALIB)} 64 x 128, seed 0", "objective": f"valid ppl.mean over {','.join(LANGS)}",
                          "budget_trials": n_plain, "threads": heads[0]["threads"], "load": [h["load"] for h in heads],
                          **{k: heads[0][k] for k in ("n_valid", "n_screen", "n_test")}, "reseeds": RESEEDS,
                          "seeds": {s: [r["seed"] for r in rs] for s, rs in by.items()}},
           "units_s": units, "budget_s": budget, "plain_trial_s": budget / n_plain, "best_valid": top,
           "cache": {"build_s": units["cache_lang"] * len(CALIB), "share_of_budget": units["cache_lang"] * len(CALIB) / budget,
                     "bytes": heads[0]["cache_bytes"]},
           "compute_per_trial_s": {s: statistics.mean((cost(o, units) - o["cache_lang"] * units["cache_lang"]) / len(r["trials"])
                                                      for o, r in zip(last[s], by[s])) for s in by},
           "full_fidelity_share": {s: statistics.mean(o["exact"] / len(r["trials"]) for o, r in zip(last[s], by[s])) for s in by},
           "wall_s_median": {s: statistics.median(r["wall_s"] for r in rs) for s, rs in by.items()},
           "regret_pct": table, "paired": paired, "family": family,
           "reeval_test_ppl_mean": {f"{s}@{n}": ci([statistics.mean(r["reeval"][n]["test"].values()) for r in rs])
                                    for s, rs in by.items() for n in PICKS[s] if all(r["reeval"].get(n) for r in rs)},
           "curves": curves}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res) + "\n")
    figure(res, out.with_suffix(".png"))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    c, u = res["conditions"], res["units_s"]
    f = lambda t: "n/a" if not t or "mean" not in t else f"{t['mean']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}]"  # noqa: E731
    lines = [f"Demo model, {c['method']} {c['sparsity']}, space {c['space']}, calibration {c['calibration']}, objective "
             f"{c['objective']} ({c['n_valid']} windows; the screen {c['n_screen']}); seeds per setting "
             f"{ {s: len(v) for s, v in c['seeds'].items()} }; {c['threads']} thread, load {min(c['load']):.1f}-{max(c['load']):.1f}. "
             f"Budget = {c['budget_trials']} plain TPE trials = {res['budget_s']:.0f} s of counted compute. Unit costs (s): exact "
             f"prune {u['exact']:.2f}, cached prune {u['cached']:.3f}, cache build per language {u['cache_lang']:.2f}, valid "
             f"window {u['win_full']:.4f} (full pass) / {u['win_screen']:.4f} (screen).", "",
             "Regret of the pick (best full-fidelity trial by valid) against the best valid any run found, %, mean "
             "[bootstrap 95%] over seeds, at a share of the budget:", "",
             "| setting | " + " | ".join(POINTS) + " |", "|---" * (len(POINTS) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f(t) + ("" if t["seeds"] == t["of"] else f" ({t['seeds']}/{t['of']} seeds)") for t in row.values())
              + " |" for s, row in res["regret_pct"].items()]
    g = lambda t: "n/a" if not t else f"{f(t)} (Holm p {t['p_holm']:.3g})"  # noqa: E731
    lines += ["", "Paired difference of regret, setting at x minus full at its whole budget (target: upper bound <= 0 "
                  "at 1/10), and minus full at the same x, percentage points, mean [95%] over search seeds, and the "
                  f"paired t-test's p adjusted by Holm over all {res['family']} comparisons below:", ""]
    for s, row in res["paired"].items():
        met = [n for n, t in row["full_at_1"].items() if t and t["hi"] <= 0]
        lines.append(f"- {s} vs full at 1: " + "; ".join(f"at {n}: {g(t)}" for n, t in row["full_at_1"].items()) + " -> target "
                     + ("met" if "1/10" in met else "missed") + (f", first met at {met[0]}" if met else f", not met by {PAIRED[-1]}"))
        lines.append(f"- {s} vs full at x: " + "; ".join(f"at {n}: {g(t)}" for n, t in row["full_at_x"].items()))
    cache = res["cache"]
    lines += ["", "Compute per trial, cache excluded: " + ", ".join(f"{s} {v:.2f} s" for s, v in res["compute_per_trial_s"].items())
              + " (trials at full fidelity: " + ", ".join(f"{s} {v:.0%}" for s, v in res["full_fidelity_share"].items())
              + f"). Cache build: {cache['build_s']:.1f} s, {cache['share_of_budget']:.1%} of the budget, {cache['bytes'] / 1e6:.1f} MB. "
              "Median wall per run: " + ", ".join(f"{s} {v:.0f} s" for s, v in res["wall_s_median"].items()) + ".", "",
              f"The picks re-run exactly on calibration seeds {c['reseeds']}: test ppl.mean over all {c['n_test']} test windows, "
              "mean of the two seeds, then mean [95%] over search seeds:", ""]
    return "\n".join(lines + [f"- {k}: {f(t)}" for k, t in res["reeval_test_ppl_mean"].items()])


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s, pts in res["curves"].items():
        x, m, lo, hi = ([p[k] for p in pts] for k in ("x", "mean", "lo", "hi"))
        ax.plot(x, m, label=s, drawstyle="steps-post")
        ax.fill_between(x, lo, hi, alpha=0.25, step="post")
    if "1" in res["regret_pct"].get("full", {}):
        ax.axhline(res["regret_pct"]["full"]["1"].get("mean", math.nan), color="black", lw=0.6, ls="--", label="full at 1")
    for x in POINTS.values():
        ax.axvline(x, color="grey", lw=0.6, ls=":")
    ax.set(xlabel=f"compute, share of {res['conditions']['budget_trials']} plain TPE trials", xlim=(0, 1),
           ylabel="regret of the pick, % (valid)", title="Anytime regret: mean, bootstrap 95% band over search seeds")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0-19", help="search seeds: 0-19 or 0,1,5")
    p.add_argument("--settings", default="full,screen", help=f"of {', '.join(SETTINGS)}")
    p.add_argument("--trials", type=int, default=40, help="plain trials: full's run and the budget's unit")
    p.add_argument("--budget", type=float, default=0.5, help="a screened run's compute, share of --trials plain trials")
    p.add_argument("--reps", type=int, default=3, help="repeats of each unit-cost measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_efficiency.jsonl"))
    p.add_argument("--summary", action="store_true", help="only the summary, from --out")
    args = p.parse_args()
    summary(args) if args.summary else run(args)


if __name__ == "__main__":
    main()
