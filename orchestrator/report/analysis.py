"""`polyprune analyze`: the analyses of tasks/analysis/ run on a sweep's FINISHED runs.

For each base model of the sweep: load the dense model, take each pruned run's
`masks.safetensors` (a SparseGPT run's saved `model/` instead: its kept weights changed;
without one it is skipped with a message), and call `tasks.analysis.inside.analyze` on
the held-out `test` text of every evaluation language (dense statistics come from the
tasks side's on-disk cache). Then the driver records: per-run scalars
(`analysis.cka.<lang>`, `analysis.lape_kept.<lang>`, ...) on the runs themselves, and the
figures + CSVs (analysis_figures.py) in `--out` and on the sweep's parent run under
`analysis/`, where `polyprune report` finds them.

Everything is checked before anything is written: an unknown sweep, a pruned run without
masks, a language the text source lacks (or with too little held-out text) is one
UserError naming the field.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from tasks.errors import UserError

from .. import tracking
from ..models import has_file, run_file
from .record import Run, eval_languages, load_record

ARTIFACT_PATH = "analysis"  # folder of the parent run's artifacts (report reads it back)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_out(out: str | Path) -> Path:
    """A new or empty folder, or an earlier analysis (whose files are replaced)."""
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise UserError("out", f"{str(out)!r} is a file; give a folder")
        if any(path.iterdir()) and not (path / "analysis_runs.csv").exists():
            raise UserError("out", f"{str(out)!r} is neither empty nor an earlier analysis; choose a new folder")
    elif not path.parent.is_dir():
        raise UserError("out", f"parent folder {str(path.parent)!r} does not exist")
    return path


def parse_languages(text: str | list | None) -> list[str] | None:
    if text is None:
        return None
    langs = [l.strip() for l in (text.split(",") if isinstance(text, str) else text) if l.strip()]
    if not langs:
        raise UserError("languages", "give language codes like en,sw")
    return langs


def plan_runs(cl, runs: list[Run]) -> tuple[dict[tuple, list[tuple[Run, str]]], list[str]]:
    """{(base model, dtype): [(run, artifact to analyse)]} and the skip messages. A pruned
    run without its masks is a UserError; a run of a method that updates the kept weights
    (SparseGPT) without its saved model is skipped."""
    from tasks.pruning import updates_weights

    plan, skipped = defaultdict(list), []
    for r in runs:
        if r.dense or r.trial is not None:
            continue
        label = f"run {r.id} ({r.variant or r.params.get('method')} {r.params.get('sparsity')} {r.calib} seed {r.seed})"
        if updates_weights(r.params.get("method")):
            if not has_file(cl, r.id, r.tags, "model"):
                skipped.append(f"skipped {label}: {r.params['method']} changes the kept weights and the run has no saved "
                               "model (sweep with save_model: true to analyse it)")
                continue
            plan[(r.params.get("model", ""), r.params.get("dtype", "auto"))].append((r, "model"))
        elif not has_file(cl, r.id, r.tags, "masks.safetensors"):
            raise UserError("masks", f"{label} has no masks.safetensors artifact; re-run it")
        else:
            plan[(r.params.get("model", ""), r.params.get("dtype", "auto"))].append((r, "masks.safetensors"))
    return dict(plan), skipped


def text_source(runs: list[Run]) -> str:
    """The evaluation text the sweep used (the held-out splits of the same source)."""
    return next((r.params["eval.ppl_data"] for r in runs if r.params.get("eval.ppl_data")),
                next((r.params["data"] for r in runs if r.params.get("data")), "builtin"))


def analyze_sweep(name: str, tracking_uri: str, languages=None, out: str | Path | None = None, *, nsamples: int = 16,
                  seqlen: int | None = None, device: str = "cpu", log_mlflow: bool = True, progress: bool = True) -> dict:
    """Analyse sweep `name`'s FINISHED pruned runs; returns {"out", "runs", "skipped", "parent", "files"}.

    languages: list or "en,sw" (default: the sweep's evaluation languages). out: folder for
    the figures and CSVs (default: a temporary one, removed after logging to the parent run)."""
    from tasks.analysis.inside import AnalysisSpec, analyze, check_spec, text_windows
    from tasks.models import load_model

    from .analysis_figures import write_outputs

    cl, parent, runs = load_record(name, tracking_uri)
    out_path = check_out(out) if out is not None else None
    declared = next((r.params["eval.ppl_languages"].split(",") for r in runs if r.params.get("eval.ppl_languages")), [])
    langs = parse_languages(languages) or eval_languages(runs) or declared
    if not langs:
        raise UserError("languages", f"the runs of {name!r} record no evaluation languages; give --languages")
    plan, skipped = plan_runs(cl, runs)
    if not plan:
        raise UserError("NAME", f"{name!r} has no finished pruned run to analyse" + (f" ({skipped[0]})" if skipped else ""))
    spec = AnalysisSpec(languages=langs, data=text_source(runs), split="test", nsamples=nsamples, seqlen=seqlen, device=device)
    models = {}
    for model_name, dtype in plan:  # every check before any work: models load, languages have text
        model, tok = load_model(model_name, dtype=dtype)
        source, resolved = check_spec(model, spec)
        for lang in langs:
            text_windows(source, tok, lang, spec.split, resolved, 1)
        models[(model_name, dtype)] = (model, tok)
    for line in skipped:
        log(line)
    results, rows = {}, {"kept": [], "layers": [], "neurons": [], "runs": []}
    with tempfile.TemporaryDirectory(prefix="polyprune-analyze-") as tmp:
        for key, items in plan.items():
            model, tok = models.pop(key)
            paths = {r.id: str(run_file(cl, r.id, r.tags, art, Path(tmp) / r.id)) for r, art in items}
            log(f"analysing {len(items)} runs of {Path(key[0]).name} on {', '.join(langs)} ({spec.split} text of {spec.data})")
            res = analyze(model, tok, paths, spec, progress=progress)
            by_id = {r.id: r for r, _ in items}
            for run_id, got in res["runs"].items():
                results[run_id] = got["metrics"]
                if log_mlflow:
                    tracking.log_metrics(cl, run_id, got["metrics"])
            collect_rows(rows, res, by_id, Path(key[0]).name)
            del model
        folder = out_path or Path(tmp) / "out"
        if folder.exists():
            for old in [*folder.glob("*.png"), *folder.glob("*.csv"), *folder.glob("*.json")]:
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        files = write_outputs(folder, rows, langs)
        if log_mlflow and parent is not None:
            cl.log_artifacts(parent.info.run_id, str(folder), artifact_path=ARTIFACT_PATH)
    return {"out": out_path, "runs": results, "skipped": skipped, "files": files, "findings": findings(rows["runs"], langs),
            "parent": parent.info.run_id if parent is not None and log_mlflow else None}


def findings(rows: list[dict], langs: list[str]) -> list[str]:
    """What `polyprune demo` and `analyze` print: per pruned variant and calibration (means over seeds), the
    kept share of each language's specific neurons' down-projection columns against all neurons, and the
    mean CKA to the dense model per language; then, per variant, for how many languages calibrating in
    that language kept its specific neurons best and gave the highest CKA. Languages without specific
    neurons are left out of the first."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["model"], r["variant"], r["sparsity"])][r["calib"]].append(r)
    out = []
    for (model, variant, sparsity), by_calib in groups.items():
        def mean(calib, key):
            got = [r[key] for r in by_calib[calib] if r.get(key) is not None]
            return sum(got) / len(got) if got else None

        for calib in by_calib:
            kept = " ".join(f"{l} {v:.3f}" for l in langs if (v := mean(calib, f"analysis.lape_kept.{l}")) is not None)
            every = mean(calib, "analysis.lape_kept.all")
            cka = " ".join(f"{l} {v:.3f}" for l in langs if (v := mean(calib, f"analysis.cka.{l}")) is not None)
            out.append(f"  {model} {variant} {sparsity} calibrated in {calib}: specific neurons kept {kept or '-'}"
                       + (f" (all neurons {every:.3f})" if every is not None else "") + f"; CKA {cka or '-'}")
        own = {l: c for l in langs for c in by_calib if c in (l, f"{l}=1")}  # calibrated in the language alone
        for key, what in (("lape_kept", "kept its own specific neurons best"), ("cka", "gave the highest CKA")):
            scored = [l for l, c in own.items() if len(by_calib) > 1 and mean(c, f"analysis.{key}.{l}") is not None]
            wins = [l for l in scored if all(mean(own[l], f"analysis.{key}.{l}") >= (mean(c, f"analysis.{key}.{l}") or -1)
                                             for c in by_calib)]
            if scored:
                out.append(f"  calibrating in a language {what} for {len(wins)} of {len(scored)} ({', '.join(wins) or 'none'})")
    return out


def collect_rows(rows: dict, res: dict, by_id: dict[str, Run], model: str) -> None:
    """The analysis' plain rows, each with the run's identity (model, method, sparsity, calib, seed)."""
    def ident(run_id):
        r = by_id[run_id]
        return {"run_id": run_id, "model": model, "variant": r.variant or r.params.get("method", ""),
                "sparsity": r.params.get("sparsity", ""), "calib": r.calib, "seed": r.seed}

    for row in res["kept"]:
        rows["kept"].append({**ident(row["run"]), **{k: v for k, v in row.items() if k != "run"}})
    for row in res["layers"]:
        rows["layers"].append({**ident(row["run"]), **{k: v for k, v in row.items() if k != "run"}})
    for row in res["neurons"]["per_layer"]:
        rows["neurons"].append({"model": model, **row})
    for run_id, got in res["runs"].items():
        rows["runs"].append({**ident(run_id), **got["metrics"]})
