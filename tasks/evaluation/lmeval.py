"""lm-eval on the in-memory (pruned) model: no save and reload.

    res = run_lmeval(model, tok, ["polyprune_offline", "xnli_sw"], limit=50)
    res["metrics"]  # {"lmeval.polyprune_offline.acc": 0.41, "lmeval.xnli_sw.acc": 0.35, ...}

The numbers equal the `lm_eval` command line on the saved model with the same
settings:
    lm_eval --model hf --model_args pretrained=DIR --tasks T --include_path P \
        --num_fewshot K --limit N --batch_size B --seed S
(`seed` sets all four of lm-eval's seeds, as `--seed S` does). The project's
offline tasks (offline_tasks.py) are always on the include path.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from pathlib import Path

from ..errors import UserError
from .offline_tasks import OFFLINE_GROUP, OFFLINE_PREFIX, offline_task_dir

# Defaults of one lm-eval run. Batching scores several loglikelihood requests in
# one forward pass; 8 was the fastest on CPU (benchmarks/eval_throughput.py) and
# gives the same numbers as batch size 1 up to float noise.
BATCH_SIZE = 8
BOOTSTRAP_ITERS = 100_000  # lm-eval's own default; only used for non-mean metrics' stderr

_task_managers: dict = {}  # (lm-eval's own tasks too?, include paths + mtimes) -> TaskManager: a process-wide cache, not a run's state


def task_manager(include_paths=(), names=None):
    """An lm-eval TaskManager over its own tasks, polyprune's offline tasks and `include_paths`.

    When `names` (the tasks asked for) are all polyprune's offline ones and no folder is added, lm-eval's
    own ~14K task YAMLs are left out of the index: 0.92 s instead of 6.74 s in a fresh process
    (benchmarks/lmeval_index.py), which every sweep worker and the sweep's validation paid once for tasks
    they never load. The tasks' configs are the same files."""
    from lm_eval.tasks import TaskManager

    ours_only = bool(names) and not include_paths and all(str(n).startswith(OFFLINE_PREFIX) for n in names)
    paths = [str(offline_task_dir())] + [str(Path(p).resolve()) for p in include_paths]
    key = (ours_only, tuple((p, Path(p).stat().st_mtime_ns) for p in paths))
    if key not in _task_managers:
        _task_managers[key] = TaskManager(include_path=paths, include_defaults=not ours_only)
    return _task_managers[key]


def check_args(tasks, *, num_fewshot=0, limit=None, batch_size=BATCH_SIZE, include_paths=()) -> list[str]:
    """Validate everything that needs no task index; return the task names (a comma-separated
    string or a list, commas inside items split too)."""
    if isinstance(tasks, str):
        tasks = [tasks]
    names = [t.strip() for item in tasks or [] for t in str(item).split(",") if t.strip()]
    if not names:
        raise UserError("tasks", f"no task given; e.g. {OFFLINE_GROUP} or xnli_sw (see `lm_eval ls tasks`)")
    if num_fewshot is not None and (not _is_int(num_fewshot) or num_fewshot < 0):
        raise UserError("num_fewshot", f"must be a whole number >= 0, got {num_fewshot!r}")
    # lm-eval reads a limit below 1 as a fraction of each task's documents.
    fraction = isinstance(limit, float) and 0 < limit < 1
    if limit is not None and not fraction and (not _is_int(limit) or limit <= 0):
        raise UserError("limit", f"must be a whole number of documents per task >= 1 (or a fraction in (0, 1)), got {limit!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise UserError("batch_size", f"must be a whole number >= 1, got {batch_size!r}")
    for p in include_paths:
        if not Path(p).is_dir():
            raise UserError("tasks", f"task folder {str(p)!r} does not exist")
    return names


def resolve_tasks(names: list[str], tm) -> list[str]:
    """Check every name (or glob pattern, e.g. xnli_*) against the task index; UserError on
    the first unknown one. Returns the names with patterns expanded, as the lm_eval CLI does."""
    resolved = []
    for name in names:
        matches = tm.match_tasks([name])
        resolved += [m for m in matches if m not in resolved]
        if not matches:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError("tasks", f"unknown task {name!r}{hint} see `lm_eval ls tasks` for lm-eval's tasks; "
                            f"offline ones: {OFFLINE_GROUP}, polyprune_cont_<lang>, polyprune_langid_<lang>")
    return resolved


def run_lmeval(model, tokenizer, tasks: list[str], *, num_fewshot: int | None = 0, limit: int | float | None = None,
               batch_size: int = BATCH_SIZE, include_paths: list[str] = (), log_samples: bool = False,
               seed: int = 0) -> dict:
    """Run lm-eval `tasks` on `model` as it is in memory.

    Returns {"metrics": {"lmeval.<task>.<metric>[.<filter>]": float, ... "_stderr" too},
    "versions": {task: version}, "n_samples": {task: {"original", "effective"}},
    "config": {...}, "time_s": float, and "samples": {task: [...]} if log_samples}.
    Groups give their aggregate and every subtask. num_fewshot=None keeps each task's default.
    """
    names = check_args(tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, include_paths=include_paths)
    tm = task_manager(include_paths, names)
    names = resolve_tasks(names, tm)

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    # HFLM takes the model object as it is (no copy, no reload); it calls eval() and tie_weights().
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
            log_samples=log_samples, bootstrap_iters=BOOTSTRAP_ITERS,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)
    res = {
        "metrics": flatten_metrics(out["results"]),
        "versions": dict(out.get("versions", {})),
        "n_samples": dict(out.get("n-samples", {})),
        "config": {"tasks": names, "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
                   "seed": seed, "include_paths": [str(p) for p in include_paths],
                   "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else _version("lm_eval")},
        "time_s": time.perf_counter() - start,
    }
    if log_samples:
        from lm_eval.utils import handle_non_serializable

        # plain JSON data, so a Ray worker can return it and MLflow can store it
        res["samples"] = json.loads(json.dumps(out["samples"], default=handle_non_serializable, ensure_ascii=False))
    return res


def flatten_metrics(results: dict) -> dict[str, float]:
    """{"xnli_sw": {"acc,none": 0.4, "acc_stderr,none": 0.01, "alias": ...}} ->
    {"lmeval.xnli_sw.acc": 0.4, "lmeval.xnli_sw.acc_stderr": 0.01}. The default filter
    "none" is dropped, others kept: "exact_match,flexible-extract" -> "exact_match.flexible-extract"
    (its stderr: "exact_match.flexible-extract_stderr"). Non-numbers ("N/A") are skipped."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            metric, filt = key.split(",", 1)
            stderr = metric.endswith("_stderr")
            name = metric[: -len("_stderr")] if stderr else metric
            name += "" if filt == "none" else f".{filt}"
            flat[f"lmeval.{task}.{name}{'_stderr' if stderr else ''}"] = float(value)
    return flat


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
