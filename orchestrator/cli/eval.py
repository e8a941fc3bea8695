"""`polyprune eval`: per-language perplexity and lm-eval tasks of a model (optionally base + masks)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id, local folder (a pruned output folder works), or models:/<model_id>, "
                   "models:/<name>@<alias>, models:/<name>/<version> (base model + masks, or the saved weights)")
    p.add_argument("--masks", default=None, help="masks.safetensors (or runs:/<run_id>/masks.safetensors) to apply to --model (the base model) first")
    p.add_argument("--tracking-uri", default=None, help="where models:/ and runs:/ resolve; default: MLFLOW_TRACKING_URI, "
                                                              "else sqlite:///mlflow.db here")
    p.add_argument("--ppl", default=None, help="languages for perplexity: en,de")
    p.add_argument("--data", default="builtin", help="source of the held-out text")
    p.add_argument("--split", default="test", help="held-out split for perplexity: valid (what tuning looks at) or test (default)")
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--nsamples", type=int, default=None, help="windows per language (default: all held-out text)")
    p.add_argument("--tasks", default=None, help="lm-eval tasks or groups: T1,T2")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="examples per lm-eval task")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR", help="folder of your own lm-eval task YAMLs (repeatable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", default=None, help="write the JSON here as well as to stdout")


def _langs(text: str) -> list[str]:
    langs = [l.strip() for l in text.split(",") if l.strip()]
    if not langs:
        raise UserError("ppl", "give languages like en,de")
    return langs


def resolve_uris(args, tmp: Path) -> tuple[str, str | None]:
    """(model to load, masks file) with models:/ and runs:/ URIs resolved through MLflow."""
    if not args.model.startswith(("models:/", "runs:/")) and not (args.masks or "").startswith("runs:/"):
        return args.model, args.masks
    from .. import models, tracking
    from ..config import default_tracking_uri

    uri = default_tracking_uri(args.tracking_uri)
    cl = tracking.client(uri, create=False)
    if cl is None:
        raise UserError("tracking-uri", f"no MLflow store at {uri}")
    name, masks = args.model, args.masks
    if name.startswith("runs:/"):
        raise UserError("model", f"{name!r}: name a model as models:/<model_id> (a run's masks go to --masks)")
    if name.startswith("models:/"):
        name, found = models.resolve_model(cl, name, tmp / "model", "model")
        if found is not None:
            if masks:
                raise UserError("masks", f"{args.model} already applies its own masks; give --masks only with a base model")
            masks = str(found)
    if masks and masks.startswith("runs:/"):
        masks = str(models.resolve_file(cl, masks, tmp / "masks", "masks"))
    return name, masks


def run(args) -> int:
    from tasks import api
    from tasks.data.sources import get_source

    if not args.ppl and not args.tasks:
        raise UserError("ppl", "nothing to evaluate: give --ppl LANGS and/or --tasks T1,T2")
    for name in ("nsamples", "limit", "seqlen", "batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(name.replace("_", "-"), f"must be a positive integer, got {value}")
    if args.num_fewshot < 0:
        raise UserError("num-fewshot", f"must be >= 0, got {args.num_fewshot}")
    if args.split not in ("valid", "test"):
        raise UserError("split", f"allowed: valid, test (calibration text is never evaluated), got {args.split!r}")
    langs = _langs(args.ppl) if args.ppl else []
    if langs:
        source = get_source(args.data)
        for lang in langs:
            source.check_language(lang, "ppl")
    tasks = []
    if args.tasks:  # every task name is checked before the model loads
        from tasks.evaluation.lmeval import check_args, resolve_tasks, task_manager

        tasks = check_args(args.tasks, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                           include_paths=args.include_path)
        resolve_tasks(tasks, task_manager(args.include_path, tasks))
    local_masks = args.masks and not args.masks.startswith("runs:/")
    base = check_masks_file(args.masks) if local_masks else None
    if args.out:
        check_out_file(args.out)
    with tempfile.TemporaryDirectory(prefix="polyprune-eval-") as tmp:
        name, masks = resolve_uris(args, Path(tmp))
        if masks and not local_masks:
            base = check_masks_file(masks)
        model, tok = api.load_model(name, args.dtype, args.device, args.trust_remote_code)
        if masks:
            from tasks.pruning.masks import apply_masks

            try:
                apply_masks(model, masks)
            except UserError as e:  # masks of another model
                raise UserError("masks", f"{e.message}; {args.masks!r} was made from model {base!r}, not {args.model!r}") from None
    metrics: dict[str, float] = {}
    if langs:
        ppl = api.perplexity(model, tok, langs, args.data, args.seqlen, args.nsamples, args.batch_size, split=args.split)
        metrics.update(api.ppl_metrics(ppl))
    if tasks:
        from tasks.evaluation.lmeval import run_lmeval

        out = run_lmeval(model, tok, tasks, num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                         include_paths=args.include_path)
        metrics.update(out["metrics"])
    text = json.dumps({"model": args.model, "masks": args.masks, "split": args.split if langs else None, "metrics": metrics}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def check_out_file(out: str) -> None:
    """Before any work: --out is a file that can be written (an existing file is replaced)."""
    path = Path(out)
    if path.is_dir():
        raise UserError("out", f"{out!r} is a folder; give a file name for the JSON (e.g. {str(path / 'eval.json')!r})")
    parent = path.resolve().parent
    if not parent.exists():
        raise UserError("out", f"parent folder of {out!r} does not exist")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError("out", f"cannot write {out!r}: {str(parent)!r} is not a writable folder")


def check_masks_file(masks: str) -> str | None:
    """--masks is a masks.safetensors written by prune (returns its base model); else one line saying what it is."""
    path = Path(masks)
    if path.is_dir():
        hint = f"; did you mean {str(path / 'masks.safetensors')!r}?" if (path / "masks.safetensors").is_file() else ""
        raise UserError("masks", f"{masks!r} is a folder; expected the file masks.safetensors written by prune{hint}")
    from safetensors import safe_open

    from tasks.pruning.masks import read_shapes

    read_shapes(path)  # a missing, truncated or foreign file: one line
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("base_model")
