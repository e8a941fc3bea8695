"""What each M-Wanda term buys on the demo model: Wanda vs M-Wanda with each term alone and together.

    python benchmarks/mwanda_ablation.py [--configs wanda,var,...] [--sparsities 0.5,0.6,0.7] [--seeds 0,1,2]
                                         [--out benchmarks/results/mwanda_ablation.jsonl]
    python benchmarks/mwanda_ablation.py --summary            # tables from the results file only
    python benchmarks/mwanda_ablation.py --sweep DIR [--configs ...] [--sparsities ...] [--seeds ...]

`--sweep DIR` runs the same cells through `polyprune sweep` instead (one sweep per schedule and per
evaluation split, valid then test, recorded in DIR/mlflow.db: browse them with `polyprune ui`), reads
the numbers back from MLflow into DIR/ablation.jsonl and prints the same tables from them.

Calibration over the ten target languages (equal shares), 64 x 128 tokens, through the tasks API
(prune, then perplexity per language on BOTH held-out splits). One JSON line per cell is appended to
--out as it finishes, so an interrupted run resumes; progress goes to stdout. Choose on `valid`,
quote on `test`: the summary ranks configurations by mean valid perplexity and prints test beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from tasks.api import PruneSpec, load_model, perplexity, prune, restore, snapshot
from tasks.data.builtin import TARGETS

LANGS = list(TARGETS)
# name -> (method, schedule, hp). Coefficients are explicit, so changing mwanda's defaults changes no row.
CONFIGS = {
    "wanda": ("wanda", "uniform", {}),
    # M-Wanda with both coefficients 0: the mean of per-language RMS activations, not Wanda's pooled norm
    "mwanda0": ("mwanda", "uniform", {"lambda_var": 0.0, "lambda_prob": 0.0}),
    "var": ("mwanda", "uniform", {"lambda_var": 1.0, "lambda_prob": 0.0}),
    "prob": ("mwanda", "uniform", {"lambda_var": 0.0, "lambda_prob": 0.5}),
    "var+prob": ("mwanda", "uniform", {"lambda_var": 1.0, "lambda_prob": 0.5}),
    "owl": ("wanda", "owl", {}),
    "cwl+": ("wanda", "cwl", {"cwl_lambda": 0.08}),
    "cwl-": ("wanda", "cwl", {"cwl_lambda": -0.08}),
    "var+prob+owl": ("mwanda", "owl", {"lambda_var": 1.0, "lambda_prob": 0.5}),
    "var+prob+cwl+": ("mwanda", "cwl", {"lambda_var": 1.0, "lambda_prob": 0.5, "cwl_lambda": 0.08}),
    "var+prob+cwl-": ("mwanda", "cwl", {"lambda_var": 1.0, "lambda_prob": 0.5, "cwl_lambda": -0.08}),
}
DEFAULT_CONFIGS = ["wanda", "mwanda0", "var+prob", "cwl-", "cwl+", "owl", "var", "prob"]


def parse_config(text: str):
    """A preset name, or method:schedule:k=v;k=v for extra cells (e.g. mwanda:uniform:lambda_var=2)."""
    if text in CONFIGS:
        return text, CONFIGS[text]
    method, schedule, hp = (text.split(":") + ["", ""])[:3]
    return text, (method, schedule or "uniform", {k: float(v) for k, v in (kv.split("=") for kv in hp.split(";") if kv)})


def evaluate(model, tok, langs: list[str], seqlen: int) -> dict:
    """Both held-out splits: perplexity per language and each window's losses (`*_losses`: {lang: {nll,
    tokens}}), from one pass per split, so benchmarks/verdict_calibration.py can resample the text."""
    row = {}
    for split in ("valid", "test"):
        ppl, per_window = perplexity(model, tok, langs, data="builtin", seqlen=seqlen, split=split, losses=True)
        row[split] = ppl
        row[f"{split}_losses"] = {l: {"nll": n.tolist(), "tokens": t.tolist()} for l, (n, t) in per_window.items()}
    return row


def geo_mean(values) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def run(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["config"], r["sparsity"], r["seed"]) for r in read(out)}
    from tasks.demo_model import DemoConfig, demo_model_path

    path = str(demo_model_path(DemoConfig(), progress=True))
    model, tok = load_model(path)
    dense = snapshot(model)
    calib = ",".join(LANGS)
    if ("dense", "0", 0) not in done:
        row = {"config": "dense", "sparsity": "0", "seed": 0, "method": "dense", "schedule": "", "hp": {}}
        row.update(evaluate(model, tok, LANGS, args.seqlen))
        append(out, row)
    # sparsity, then seed, then config: a partial run already holds complete tables for the first sparsities
    cells = [(c, s, seed) for s in args.sparsities.split(",") for seed in map(int, args.seeds.split(",")) for c in args.configs.split(",")]
    todo = [c for c in cells if (c[0], c[1], c[2]) not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already in {out}", flush=True)
    for k, (config, sparsity, seed) in enumerate(todo, 1):
        name, (method, schedule, hp) = parse_config(config)
        t0 = time.perf_counter()
        spec = PruneSpec(model=path, method=method, sparsity=sparsity, calib=calib, data="builtin", nsamples=args.nsamples,
                         seqlen=args.seqlen, seed=seed, schedule=schedule, hp=hp)
        res = prune(model, tok, spec, progress=False)
        row = {"config": name, "sparsity": sparsity, "seed": seed, "method": method, "schedule": schedule, "hp": hp,
               "targets": res.result["sparsity_per_block"]["target"], "actual": res.result["sparsity_actual"]}
        row.update(evaluate(model, tok, LANGS, args.seqlen))
        restore(model, dense)
        append(out, row)
        print(f"[{k}/{len(todo)}] {name} s={sparsity} seed={seed}: valid {geo_mean(row['valid'].values()):.3f} "
              f"test {geo_mean(row['test'].values()):.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run_sweeps(args) -> Path:
    """The cells as sweeps, recorded in MLflow; the rows read back from it, as `run` writes them."""
    import subprocess
    import sys

    import yaml

    from tasks.demo_model import DemoConfig, demo_model_path

    folder = Path(args.sweep).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = str(demo_model_path(DemoConfig(), progress=True))
    groups: dict[str, list] = {}  # schedule -> [(name, method, hp)]: a sweep has one schedule
    for config in args.configs.split(","):
        name, (method, schedule, hp) = parse_config(config)
        groups.setdefault(schedule, []).append((name, method, hp))
    names = {}
    for split in ("valid", "test"):
        for schedule, entries in groups.items():
            sweep = {"name": f"ablation-{schedule}-{split}", "models": [path],
                     "methods": [{"name": m, "hp": hp} for _, m, hp in entries],
                     "sparsities": args.sparsities.split(","), "seeds": [int(x) for x in args.seeds.split(",")],
                     "calibration": {"languages": [",".join(LANGS)], "data": "builtin", "nsamples": args.nsamples,
                                     "seqlen": args.seqlen},
                     "schedule": schedule,
                     "evaluation": {"ppl": {"languages": LANGS, "seqlen": args.seqlen, "split": split}},
                     "resources": {"cpu_workers": 1, "cpus_per_worker": args.threads},
                     "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}
            file = folder / f"{sweep['name']}.yaml"
            file.write_text(yaml.safe_dump(sweep, sort_keys=False))
            print(f"polyprune sweep {file}", flush=True)
            subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", str(file)], check=True)
            names.update({(schedule, m, json.dumps(hp, sort_keys=True)): n for n, m, hp in entries})
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    rows: dict[tuple, dict] = {}
    for split in ("valid", "test"):
        for schedule in groups:
            exp = cl.get_experiment_by_name(f"ablation-{schedule}-{split}")
            for r in cl.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000):
                p, m = r.data.params, r.data.metrics
                if "method" not in p:  # the sweep's parent run
                    continue
                if p.get("method") == "dense":
                    key, config = ("dense", "0", 0), "dense"
                else:
                    hp = {k: float(v) for k, v in p.items() if k in ("lambda_var", "lambda_prob", "cwl_lambda")}
                    config = names[(schedule, p["method"], json.dumps(hp, sort_keys=True))]
                    key = (config, p["sparsity"], int(p["seed"]))
                row = rows.setdefault(key, {"config": key[0], "sparsity": key[1], "seed": key[2],
                                            "run_ids": {}, "hp": {}})
                row[split] = {lang: m[f"ppl.{lang}"] for lang in LANGS}
                row["run_ids"][split] = r.info.run_id
    out = folder / "ablation.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows.values() if "valid" in r and "test" in r))
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def summary(path: Path) -> None:
    rows = read(path)
    dense = next((r for r in rows if r["config"] == "dense"), None)
    if dense:
        print(f"dense: valid {geo_mean(dense['valid'].values()):.3f}, test {geo_mean(dense['test'].values()):.3f}\n")
    for sparsity in sorted({r["sparsity"] for r in rows if r["config"] != "dense"}):
        cells = [r for r in rows if r["sparsity"] == sparsity]
        by = {}
        for r in cells:
            by.setdefault(r["config"], []).append(r)
        base_t = {r["seed"]: geo_mean(r["test"].values()) for r in by.get("wanda", [])}
        print(f"### sparsity {sparsity} (mean ppl over the ten languages, geometric; mean ± sd over seeds)\n")
        print("| config | seeds | valid | test | test − wanda (paired) | " + " | ".join(LANGS) + " |")
        print("|---|---|---|---|---|" + "---|" * len(LANGS))
        for config, rs in sorted(by.items(), key=lambda kv: statistics.mean(geo_mean(r["valid"].values()) for r in kv[1])):
            valid = [geo_mean(r["valid"].values()) for r in rs]
            test = [geo_mean(r["test"].values()) for r in rs]
            diff = [geo_mean(r["test"].values()) - base_t[r["seed"]] for r in rs if r["seed"] in base_t]
            langs = [statistics.mean(r["test"][lang] for r in rs) for lang in LANGS]
            label = config if config in CONFIGS else config.replace("mwanda:uniform:", "mwanda ").replace(";", " ")
            print(f"| {label} | {len(rs)} | {spread(valid)} | {spread(test)} | {spread(diff) if diff else '-'} | "
                  + " | ".join(f"{v:.2f}" for v in langs) + " |")
        print()


def blocks(args) -> None:
    """Per block: what owl and cwl score, and the per-block sparsities they give (seed 0 calibration)."""
    import torch

    from tasks.data.builtin import TARGETS as langs
    from tasks.data.calibration import sample_calibration
    from tasks.data.sources import get_source
    from tasks.demo_model import DemoConfig, demo_model_path
    from tasks.pruning.pipeline import schedule_targets
    from tasks.pruning.schedules import CWL, OWL

    model, tok = load_model(str(demo_model_path(DemoConfig())))
    calib = sample_calibration(get_source("builtin"), tok, {l: 1 / len(langs) for l in langs}, args.nsamples, args.seqlen, 0)
    n_lang = len(calib.languages)
    rows = []

    class Probe(CWL):
        def block_score(self, linears, stats):
            a = torch.cat([stats[n].rms() for n in linears], dim=1)
            log_rho = torch.corrcoef(a.clamp_min(1e-12).log()).triu(1)
            rows.append({"rho": 1 - super().block_score(linears, stats),
                         "rho_log": (log_rho.sum() / (n_lang * (n_lang - 1) / 2)).item(),
                         "owl": OWL(OWL.Params()).block_score(linears, stats)})
            return 1 - rows[-1]["rho"]

    for lam in (0.08, -0.08):
        targets = schedule_targets(model, Probe(CWL.Params(cwl_lambda=lam)), float(args.sparsities.split(",")[0]),
                                   calib.input_ids, calib.language, n_lang, 8, "cpu")
        print(f"cwl_lambda={lam:+}: per-block sparsity {[round(t, 3) for t in targets]}")
    for b, r in enumerate(rows[: len(rows) // 2]):
        print(f"block {b}: pearson rho {r['rho']:.4f}, pearson on log activations {r['rho_log']:.4f}, owl D {r['owl']:.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    p.add_argument("--sparsities", default="0.6,0.7,0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mwanda_ablation.jsonl"))
    p.add_argument("--summary", action="store_true", help="only print the tables of --out")
    p.add_argument("--sweep", metavar="DIR", help="run the cells as `polyprune sweep`s recorded in DIR/mlflow.db")
    p.add_argument("--blocks", action="store_true", help="only print what owl and cwl score per block (first sparsity)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on a shared, loaded CPU one thread spent 7x less CPU per forward than two")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.blocks:
        return blocks(args)
    if args.sweep:
        return summary(run_sweeps(args))
    if not args.summary:
        run(args)
    summary(Path(args.out))


if __name__ == "__main__":
    main()
