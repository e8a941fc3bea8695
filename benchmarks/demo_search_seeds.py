"""Does the demo's search beat plain Wanda on the uniform mix on text it never saw? The demo's search, once per seed.

    python benchmarks/demo_search_seeds.py [--seeds 0,1,2] [--trials 20] [--out /tmp/demo-search-seeds]

Each seed is a separate study (its own folder): the demo's search file (`polyprune demo`'s, built by
`orchestrator.cli.demo.search_file`: M-Wanda's `mwanda_full` space for ppl.mean on the valid split,
after the baselines: plain Wanda on the uniform / <lang>-only / en-only / MBS mixes, and M-Wanda alone on
the uniform mix; no confirmation), with the seed as calibration and sampler
seed, on the cached demo model, a local Ray. Prints, per seed, the best trial chosen on valid and its
test ppl.mean against every baseline's test ppl.mean, and one JSON line per seed to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orchestrator.cli.demo import DEFAULTS, search_file
from orchestrator.search.driver import run_search
from tasks.demo_model import DemoConfig, demo_model_path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=DEFAULTS["trials"], help="searched trials after the baselines")
    p.add_argument("--out", default="/tmp/demo-search-seeds")
    args = p.parse_args()
    model = str(demo_model_path(DemoConfig()))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    calibs, evals = DEFAULTS["calib"].split(","), DEFAULTS["eval"].split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = root / f"seed{seed}"
        out.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        search_file(out, model, DEFAULTS["sparsity"], calibs, evals, DEFAULTS["nsamples"], DEFAULTS["seqlen"], seed,
                    args.trials, DemoConfig())
        res = run_search(out / "demo_search.yaml")
        if res["status"] != "FINISHED" or not res["best"]:
            raise SystemExit(f"seed {seed}: search {res['status']}; rerun to resume it")
        best = res["best"][0]
        row = {"seed": seed, "n_complete": res["n_complete"], "wall_s": round(time.perf_counter() - t0, 1),
               "best": {"trial": best["number"], "calib": best["calib"],
                        "schedule": best["schedule"], "hp": best["hp"], "valid.ppl.mean": best["values"][0],
                        "test.ppl.mean": best["test"].get("test.ppl.mean")},
               "baselines": {b["label"]: {"valid.ppl.mean": b["values"][0], "test.ppl.mean": b["test"].get("test.ppl.mean")}
                             for b in res["baselines"] if b["values"]}}
        with open(root / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        uni = row["baselines"]["wanda·uniform"]["test.ppl.mean"]
        print(f"seed {seed}: best trial {best['number']} (valid {best['values'][0]:.4f}) test ppl.mean "
              f"{row['best']['test.ppl.mean']:.4f} vs wanda·uniform {uni:.4f} "
              f"({100 * (row['best']['test.ppl.mean'] / uni - 1):+.2f}%); {row['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
