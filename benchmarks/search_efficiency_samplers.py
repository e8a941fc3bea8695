"""Which sampler and pruner find a good pruned model for the least compute? (issue 21, docs/search.md)

    python benchmarks/search_efficiency_samplers.py [--seeds 0,1,2] [--ref-trials 40] [--trials 20]
        [--settings tpe:none,gp:none,random:none,tpe:wilcoxon,tpe:median,gp:wilcoxon] [--out benchmarks/results]

On the demo model (alias `demo`), the search a search file with `space: mwanda_mix`, objective
ppl.mean on valid, would run (no baselines: the samplers are compared, not the enqueued points),
for each sampler:pruner setting and search seed: the trials run one after another in this process,
with the same pieces the search uses (the file's parsing, `search_spaces.space.sample`,
`search.sampling`'s sampler and pruner, `tasks.api.prune` and per-language `perplexity` with
`on_language` reporting each language to the pruner as `engine.worker.Reporter` does). Compute = the
sum of the trials' cell seconds (prune + valid pass + test pass; a pruned trial only what it ran).
No Ray or MLflow: their overhead is the same for every setting and would only blur the comparison.

Per run, after each trial: the compute so far and the test ppl.mean of the best trial so far chosen
on valid. The reference is plain TPE with --ref-trials trials; a setting "reaches" it when its best-
by-valid trial's test value is at or below the reference's final one; the figure is the compute it
took, as a fraction of the reference's compute (median over seeds). The target: <= 1/3.
tpe:none's first --trials trials are the reference's own (same seed, one trial at a time), so it is
read off the reference run. Writes OUT/search_efficiency_samplers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

LANGS = ["en", "sw", "zh", "de", "ru"]  # evaluation languages: the pruner's steps (languages as instances)
PRUNER_ARGS = {"wilcoxon": {"p_threshold": 0.1}, "median": {"n_startup_trials": 5}, "successive_halving": {},
               "threshold": {"upper": 1e9}, "none": {}}


def search_config(seed: int, sampler: str, pruner: str, nsamples: int, eval_windows: int):
    from orchestrator.search.file import parse_search

    raw = {"name": f"eff-{sampler}-{pruner}-{seed}", "model": "demo", "method": "mwanda", "sparsity": 0.65,
           "calibration": {"languages": ["en", "sw", "zh"], "nsamples": nsamples, "seqlen": 128},
           "evaluation": {"ppl": {"languages": LANGS, "nsamples": eval_windows, "seqlen": 128}},
           "space": "mwanda_mix", "objectives": [{"metric": "ppl.mean"}], "n_trials": 100, "parallel": 1,
           "baselines": False, "sampler_seed": seed, "sampler": {"name": sampler},
           "pruner": {"name": pruner, **PRUNER_ARGS[pruner]}, "storage": "sqlite:////tmp/unused.db"}
    return parse_search(raw, Path.cwd())


class Bench:
    def __init__(self):
        from tasks.api import load_model, snapshot
        from tasks.demo_model import demo_model_path

        self.path = str(demo_model_path())
        self.model, self.tok = load_model(self.path, "auto", "cpu")
        self.snap = snapshot(self.model)

    def run(self, seed: int, sampler: str, pruner: str, n_trials: int, nsamples: int, eval_windows: int) -> list[dict]:
        import optuna
        from optuna.trial import TrialState

        from orchestrator.search.cells import trial_cell
        from orchestrator.search.sampling import build_pruner, build_sampler
        from orchestrator.engine.cells import spec_of
        from tasks.api import perplexity, ppl_metrics, prune, restore

        cfg, space = search_config(seed, sampler, pruner, nsamples, eval_windows)
        cfg.model = self.path
        langs = list(cfg.calibration.languages)
        study = optuna.create_study(sampler=build_sampler(cfg.sampler, seed), pruner=build_pruner(cfg.pruner))
        rows, spent, best = [], 0.0, None
        for _ in range(n_trials):
            trial = study.ask(space.distributions(langs))
            spec = spec_of(trial_cell(cfg, space, trial).key)  # the trial's cell, as a search's driver makes it
            restore(self.model, self.snap)
            t0 = time.process_time()
            prune(self.model, self.tok, spec, progress=False)

            class Pruned(Exception):
                pass

            def report(i, lang, value):
                trial.report(value, i)
                if trial.should_prune():
                    raise Pruned

            try:
                valid = perplexity(self.model, self.tok, LANGS, "builtin", 128, eval_windows, split="valid", on_language=report)
            except Pruned:
                spent += time.process_time() - t0
                study.tell(trial, state=TrialState.PRUNED)
                rows.append({"trial": trial.number, "state": "PRUNED", "spent_s": spent, "best_test": best and best[1]})
                continue
            test = perplexity(self.model, self.tok, LANGS, "builtin", 128, eval_windows, split="test")
            spent += time.process_time() - t0
            v, t = ppl_metrics(valid)["ppl.mean"], ppl_metrics(test)["ppl.mean"]
            study.tell(trial, v)
            if best is None or v < best[0]:
                best = (v, t)
            rows.append({"trial": trial.number, "state": "COMPLETE", "valid": v, "test": t, "spent_s": spent,
                         "best_valid": best[0], "best_test": best[1]})
        return rows


def reach(rows: list[dict], target: float) -> float | None:
    """Compute spent when the best-by-valid trial's test value first is <= target (None: never)."""
    for r in rows:
        if r.get("best_test") is not None and r["best_test"] <= target + 1e-12:
            return r["spent_s"]
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ref-trials", type=int, default=40)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--settings", default="tpe:none,gp:none,random:none,tpe:wilcoxon,tpe:median,gp:wilcoxon")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences per trial")
    p.add_argument("--eval-windows", type=int, default=8, help="windows per language and split")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    seeds = [int(s) for s in args.seeds.split(",")]
    bench, runs, t_start = Bench(), {}, time.perf_counter()
    for seed in seeds:
        runs[f"tpe:none@{seed}:ref"] = bench.run(seed, "tpe", "none", args.ref_trials, args.nsamples, args.eval_windows)
        print(f"reference seed {seed}: {runs[f'tpe:none@{seed}:ref'][-1]}", flush=True)
        for setting in args.settings.split(","):
            sampler, pruner = setting.split(":")
            if setting == "tpe:none":
                rows = runs[f"tpe:none@{seed}:ref"][:args.trials]
            else:
                rows = bench.run(seed, sampler, pruner, args.trials, args.nsamples, args.eval_windows)
            runs[f"{setting}@{seed}"] = rows
            print(f"{setting} seed {seed}: {rows[-1]}", flush=True)
    table = []
    for setting in args.settings.split(","):
        per_seed = []
        for seed in seeds:
            ref = runs[f"tpe:none@{seed}:ref"]
            rows = runs[f"{setting}@{seed}"]
            got = reach(rows, ref[-1]["best_test"])
            per_seed.append({"seed": seed, "ref_test": ref[-1]["best_test"], "ref_compute_s": ref[-1]["spent_s"],
                             "best_test": rows[-1]["best_test"], "compute_s": rows[-1]["spent_s"],
                             "pruned": sum(r["state"] == "PRUNED" for r in rows),
                             "reach_fraction": None if got is None else got / ref[-1]["spent_s"]})
        fr = [s["reach_fraction"] if s["reach_fraction"] is not None else float("inf") for s in per_seed]
        med = statistics.median(fr)
        table.append({"setting": setting, "trials": args.trials, "seeds": per_seed, "median_reach_fraction": med,
                      "meets_target": med <= 1 / 3,
                      "median_compute_fraction": statistics.median(s["compute_s"] / s["ref_compute_s"] for s in per_seed),
                      "median_best_test": statistics.median(s["best_test"] for s in per_seed)})
    meta = {"model": "demo", "space": "mwanda_mix", "method": "mwanda", "sparsity": 0.65, "objective": "ppl.mean (valid)",
            "eval_languages": LANGS, "calib_nsamples": args.nsamples, "eval_windows": args.eval_windows,
            "ref_trials": args.ref_trials, "trials": args.trials, "seeds": seeds, "pruner_args": PRUNER_ARGS,
            "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - t_start, 1),
            "load_at_end": os.getloadavg()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_efficiency_samplers.json").write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=1) + "\n")
    lines = [f"Demo model, mwanda 0.65, space mwanda_mix, objective ppl.mean on valid; reference: plain TPE, "
             f"{args.ref_trials} trials; others {args.trials} trials; seeds {args.seeds}; calib {args.nsamples} seqs, "
             f"{args.eval_windows} windows x {len(LANGS)} languages per split; {meta['threads']} thread(s); "
             f"wall {meta['wall_s']} s.", "",
             "| sampler:pruner | median compute to reach the reference's best test (fraction of its compute) | "
             "per seed | median compute of the run (fraction) | median best test ppl.mean | pruned trials (per seed) |",
             "|---|---|---|---|---|---|"]
    for row in table:
        def f(x):
            return "never" if x is None or x == float("inf") else f"{x:.2f}"

        lines.append(f"| {row['setting']} | {f(row['median_reach_fraction'])} | "
                     f"{', '.join(f(s['reach_fraction']) for s in row['seeds'])} | {row['median_compute_fraction']:.2f} | "
                     f"{row['median_best_test']:.4f} | {', '.join(str(s['pruned']) for s in row['seeds'])} |")
    refs = [runs[f"tpe:none@{s}:ref"][-1] for s in seeds]
    lines += ["", "Reference (plain TPE, per seed): best test ppl.mean "
              + ", ".join(f"{r['best_test']:.4f}" for r in refs) + "; compute "
              + ", ".join(f"{r['spent_s']:.0f} s" for r in refs) + "."]
    (out / "search_efficiency_samplers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
