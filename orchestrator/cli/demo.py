"""`polyprune demo`: the whole flow offline on a CPU, in a few minutes.

1. loads the shipped demo model (a small multilingual byte-level Llama trained by polyprune on the
   built-in corpus with English-dominated language shares; `--steps N` trains another, cached);
2. writes a sweep file and runs it on a local Ray with the MLflow record: the dense model
   and Wanda calibrated in each of a few languages, perplexity per language and the
   offline downstream tasks;
3. prints the calibration-language x evaluation-language table;
4. runs an Optuna search of M-Wanda (mix, coefficients, schedule: `mwanda_full`) for mean
   perplexity on the valid split, after its baselines as the literature runs them (plain Wanda
   on the uniform mix, the non-English language alone, English alone, MBS from the demo model's
   own training mix) and M-Wanda alone on the uniform mix, and prints the best trial against
   every baseline on the test split, which the search never saw; then confirms it: the best
   trials re-run on selection seeds choose the winner, which runs with every baseline on fresh
   test seeds, and prints the verdict per baseline (interval over seeds and text, Holm's p;
   docs/search.md "Confirmation");
5. writes the report (HTML + figures) and logs it to MLflow.

Everything lands in --out (default ./polyprune-demo); running the demo again resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# 60-70% sparsity is where calibration language shows on this model (measured: docs/mwanda.md).
# The confirmation's sizes are a search's own defaults (orchestrator/search/confirm.py DEFAULTS) unless given.
DEFAULTS = dict(method="wanda", sparsity="0.65", calib="en,sw,zh", eval="en,sw,zh,de,ru", nsamples=64, seqlen=128,
                seed=0, limit=32, trials=20, out="polyprune-demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=DEFAULTS["method"])
    p.add_argument("--sparsity", default=DEFAULTS["sparsity"])
    p.add_argument("--calib", default=DEFAULTS["calib"], help="calibration languages, one pruned model each")
    p.add_argument("--eval", default=DEFAULTS["eval"], help="evaluation languages")
    p.add_argument("--nsamples", type=int, default=DEFAULTS["nsamples"])
    p.add_argument("--seqlen", type=int, default=DEFAULTS["seqlen"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="items per offline downstream task (0: skip them)")
    p.add_argument("--trials", type=int, default=DEFAULTS["trials"], help="searched trials after the baselines (0: no search)")
    p.add_argument("--confirm-top", type=int, default=None, help="best trials re-run on the selection seeds (default: a search's)")
    p.add_argument("--selection-seeds", type=int, default=None,
                   help="calibration seeds that choose the winner among them, after --seed (default: a search's)")
    p.add_argument("--test-seeds", type=int, default=None,
                   help="fresh calibration seeds the winner and the baselines are tested on (0: no confirmation; default: a search's)")
    p.add_argument("--steps", type=int, default=None, help="train a demo model of N steps instead of the shipped one")
    p.add_argument("--out", default=DEFAULTS["out"], help="folder for the sweep/search files, MLflow and Optuna stores, report")


def _langs(text: str, field: str) -> list[str]:
    from tasks.data import builtin
    from tasks.errors import UserError

    langs = [l.strip() for l in text.split(",") if l.strip()]
    if not langs:
        raise UserError(field, "give languages like en,sw")
    for lang in langs:
        if lang not in builtin.LANGUAGES:
            raise UserError(field, f"{lang!r} is not in the built-in corpus; allowed: {', '.join(builtin.TARGETS)} and more")
    return langs


def run(args) -> int:
    import os

    import yaml

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per mask file drowns the output

    from tasks.errors import UserError

    calibs, evals = _langs(args.calib, "calib"), _langs(args.eval, "eval")
    for name in ("limit", "trials"):
        if getattr(args, name) < 0:
            raise UserError(name, f"must be >= 0, got {getattr(args, name)}")
    for name, least in (("confirm_top", 1), ("selection_seeds", 1)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            raise UserError(name.replace("_", "-"), f"must be >= {least}, got {getattr(args, name)}")
    if args.test_seeds is not None and (args.test_seeds < 0 or args.test_seeds == 1):
        raise UserError("test-seeds", f"0 (no confirmation) or at least 2 (a paired test), got {args.test_seeds}")
    if args.trials and len(calibs) < 2:
        raise UserError("calib", "the search mixes calibration languages: give at least two (or --trials 0)")
    out = Path(args.out).resolve()
    if not out.parent.is_dir():
        raise UserError("out", f"parent folder {str(out.parent)!r} does not exist")

    from tasks.demo_model import DemoConfig, demo_model_path

    demo_cfg = DemoConfig() if args.steps is None else DemoConfig(steps=args.steps)
    model = str(demo_model_path(demo_cfg, progress=True))
    tasks = [f"polyprune_{kind}_{lang}" for kind in ("cont", "langid") for lang in evals]
    evaluation = {"ppl": {"languages": evals}}
    if args.limit:
        evaluation["lm_eval"] = {"tasks": tasks, "limit": args.limit}
    sweep_file = {
        "name": "polyprune-demo", "models": [model], "methods": [args.method], "sparsities": [args.sparsity],
        "calibration": {"languages": calibs, "data": "builtin", "nsamples": args.nsamples, "seqlen": args.seqlen},
        "seeds": [args.seed], "evaluation": evaluation, "resources": {"cpu_workers": 1},
        "tracking_uri": "sqlite:///mlflow.db",
    }
    out.mkdir(exist_ok=True)
    path = out / "demo_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_file, sort_keys=False))
    from ..sweep.driver import execute
    from ..sweep.file import expand, load_sweep

    cfg = load_sweep(path)
    code = execute(cfg, expand(cfg), file=path)
    _print_table(cfg, evals, bool(args.limit))
    if args.trials:
        code = code or _search(out, model, args, calibs, evals, demo_cfg)
    if code == 0:  # what each calibration language kept inside the model: a section of the report
        from ..report.analysis import analyze_sweep

        found = analyze_sweep(cfg.name, cfg.tracking_uri, evals, out / "analysis", seqlen=args.seqlen)["findings"]
        if found:
            print("\ninside the pruned models (polyprune analyze; a smoke check on one seed, docs/analyses.md):")
            print("\n".join(found))
    code = code or _report(out, cfg)
    print(f"\nall runs: {ui_line(cfg.tracking_uri)}\nreport:   {out / 'report' / 'report.html'}")
    return code


def ui_line(uri: str) -> str:
    """The command the demo's last lines give for browsing every run: `ui` opens the newest experiment."""
    return f"polyprune ui --tracking-uri {uri}"


def _print_table(cfg, evals: list[str], downstream: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from .. import tracking

    cl = tracking.client(cfg.tracking_uri, create=False)
    exp = tracking.experiment_id(cl, cfg.name, cfg.tracking_uri, create=False)
    rows = {}
    for r in tracking.finished_cells(cl, exp, cfg.name).values():
        p, m = r.data.params, r.data.metrics
        label = "dense" if p.get("method") == "dense" else f"{p['method']} {p['sparsity']} {p['calib'].split('=')[0]}"
        row = {f"ppl.{l}": m.get(f"ppl.{l}") for l in evals}
        if downstream:
            # acc_norm: per-byte likelihood, so a short distractor does not win by being short
            for kind in ("cont", "langid"):
                accs = [m.get(f"lmeval.polyprune_{kind}_{l}.acc_norm") for l in evals]
                row[f"acc.{kind}"] = sum(accs) / len(accs) if None not in accs else None
        rows[label] = row
    cols = list(next(iter(rows.values()), {}))
    pruned = [r for r in rows if r != "dense"]
    table = Table(title="perplexity on held-out text; downstream acc_norm (bold: best pruned model)")
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c.replace("acc.", ""), justify="right")
    for label in sorted(rows, key=lambda r: (r != "dense", r)):
        cells = []
        for c in cols:
            v = rows[label][c]
            vals = [rows[r][c] for r in pruned if rows[r][c] is not None]
            best = vals and (min(vals) if c.startswith("ppl") else max(vals))
            text = "-" if v is None else (f"{v:.2f}" if c.startswith("ppl") else f"{v:.3f}")
            cells.append(f"[bold]{text}[/bold]" if label != "dense" and v is not None and v == best else text)
        table.add_row(label, *cells)
    Console().print(table)
    own = [l for l in evals if any(r.endswith(f" {l}") for r in pruned)]
    wins = [l for l in own if min(pruned, key=lambda r: rows[r][f"ppl.{l}"] or float("inf")).endswith(f" {l}")]
    if own:
        print(f"calibrating in the evaluation language gave the lowest perplexity for {len(wins)} of {len(own)} "
              f"languages ({', '.join(wins) or 'none'})")


def search_file(out: Path, model: str, sparsity: str, calibs: list[str], evals: list[str], nsamples: int, seqlen: int,
                seed: int, trials: int, demo_cfg, confirm: dict | bool = False) -> dict:
    """The demo's search file (written to `out`, with the MBS shares file it names): M-Wanda's full
    space for ppl.mean on valid, after the baselines; `seed` is the calibration and the sampler seed;
    `confirm`: the search file's `confirm:` (docs/search.md)."""
    import yaml

    from tasks.demo_model import training_shares

    other = next((l for l in calibs if l != "en"), calibs[0])  # the non-English language to keep
    (out / "demo_training_shares.yaml").write_text(yaml.safe_dump({
        "source": "the demo model's training tokens per language, from its recipe (tasks.demo_model.training_shares)",
        "shares": {l: round(v, 6) for l, v in training_shares(demo_cfg).items()}}, sort_keys=False))
    baselines = ["uniform", {"name": f"{other}-only", "calib": other}, {"name": "mbs", "calib": {"from": "demo_training_shares.yaml"}}]
    if "en" in calibs and other != "en":
        baselines.insert(2, {"name": "en-only", "calib": "en"})
    search = {
        "name": "polyprune-demo-search", "model": model, "method": "mwanda", "sparsity": sparsity,
        "calibration": {"languages": calibs, "data": "builtin", "nsamples": nsamples, "seqlen": seqlen},
        "seed": seed, "evaluation": {"ppl": {"languages": evals}}, "space": "mwanda_full",
        "objectives": [{"metric": "ppl.mean", "direction": "minimize"}], "baselines": baselines,
        "n_trials": trials, "parallel": 1, "sampler_seed": seed, "confirm": confirm,
        "fidelity": True,  # trials screened from cached statistics, the best promoted (docs/search.md, "Screened searches")
        "storage": f"sqlite:///{out / 'optuna.db'}", "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
    }
    (out / "demo_search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    return search


def _search(out: Path, model: str, args, calibs: list[str], evals: list[str], demo_cfg) -> int:
    from ..search.driver import run_search

    sizes = {"top": args.confirm_top, "selection_seeds": args.selection_seeds, "test_seeds": args.test_seeds}
    confirm = {k: v for k, v in sizes.items() if v is not None} if args.test_seeds != 0 else False
    search_file(out, model, args.sparsity, calibs, evals, args.nsamples, args.seqlen, args.seed, args.trials, demo_cfg, confirm)
    res = run_search(out / "demo_search.yaml")
    bases = [b for b in res["baselines"] if b["values"]]
    f = res.get("fidelity") or {}
    searched = (f"{f['screen']['runs']} searched trials screened, {f['full']['runs']} promoted to full fidelity" if f
                else f"{res['n_complete']} searched trials")
    print(f"\nsearch of M-Wanda (mix, coefficients, schedule) for ppl.mean over {','.join(evals)}: {len(bases)} baselines "
          f"(as the literature runs them; the label names the method), then {searched}; chosen on "
          f"the valid split, quoted on the test split it never saw")
    print(f"  {'':26s} {'valid':>8s} {'test':>8s}  calib")
    for b in bases:
        test = b["test"].get("test.ppl.mean", float("nan"))
        print(f"  baseline {b['label']:17s} {b['values'][0]:8.3f} {test:8.3f}  {b['calib']}")
    for t in res["best"]:
        test = t["test"].get("test.ppl.mean", float("nan"))
        print(f"  best: trial {t['number']:<14d} {t['values'][0]:8.3f} {test:8.3f}  {t['calib']} "
              f"schedule={t['schedule'] if isinstance(t['schedule'], str) else 'profile'} hp={t['hp']}")
        for b in bases:  # one calibration draw: no verdict before the confirmation
            ref = b["test"].get("test.ppl.mean")
            if ref:
                print(f"    vs {b['label']:17s} test ppl.mean {100 * (test / ref - 1):+.2f}% (seed {args.seed} only)")
    if res.get("confirmation"):  # the verdict: chosen on selection seeds, tested on fresh test seeds
        from ..search.confirm import lines

        print("\n" + "\n".join(lines(res["confirmation"])))
    return 0 if res["status"] == "FINISHED" else 1


def _report(out: Path, cfg) -> int:
    from . import main

    return main(["report", "polyprune-demo", "--tracking-uri", cfg.tracking_uri, "--out", str(out / "report")])
