"""The work side of sweeps and searches: `CellRunner` runs cells (kept as Ray actors by
`scheduler.WorkerPool`).

A runner is long-lived: it keeps the current base model in host memory and, between
cells of the same model, restores the dense weights of the prunable linears from a
snapshot instead of reloading from disk. It gets a plain dict and returns a plain
dict (metrics, the files it wrote, placement); it never touches MLflow's tracking store: it
writes the cell's artifacts straight into the logged model's artifact location the driver
gave it (`deliver`) and reports their sizes, which the driver checks. A failing cell
comes back as {"ok": False, "error": ...}; only a dead process or node raises.

A model is loaded on the host after its size (from its config) was checked against the host's
free memory: too big fails the cell in one line, never an OOM kill. A model that fits the cell's
device moves there whole (the fast path); a bigger one stays on the host: pruning and perplexity
move one decoder block at a time to the device, lm-eval runs it spread over the cell's GPUs with
the rest offloaded to the host (`tasks.evaluation.offload`).

`CellRunner` is plain Python (no Ray), so the benchmark's one-process-per-cell
baseline runs exactly the same code.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from ..names import HOST, LOSSES_FILE, NODE, PLACEMENT, WORKER_PID
from .system import SystemSampler


class CellRunner:
    def __init__(self, threads: int | None = None, device_memory: int | None = None):
        """`device_memory`: the device's free bytes to plan with instead of measuring them (tests
        simulate a small device with it, also on the CPU)."""
        import torch

        if threads:
            torch.set_num_threads(threads)  # match the CPUs Ray gave this actor; no oversubscription
        self.name: str | None = None  # the base model in memory
        self.model = self.tok = self.snap = None
        self.dirty = False  # weights differ from the snapshot
        self.device_memory = device_memory
        self.whole = True  # the model sits whole on the device (else on the host, moved block by block)
        self.stats = {}  # (data, seed, nsamples, seqlen) -> the dense model's per-language statistics (screen cells)

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "node": _node_id(), "device": _device()}

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            if task.get("delay_s"):  # fault-injection hook for tests (POLYPRUNE_CELL_DELAY_S)
                time.sleep(float(task["delay_s"]))
            with SystemSampler() as system:
                out = self._run(task)
            out["metrics"].update(system.metrics())
            out["metrics"]["time.cell_s"] = time.perf_counter() - t0
            tags = {**out.get("tags", {}), **self._where(), PLACEMENT: "device" if self.whole else "blockwise"}
            return {"ok": True, **out, "tags": tags}
        except Pruned as e:  # the search's pruner stopped it: not a failure, and it cost what it ran
            self.dirty = True
            metrics = {**{f"ppl.{k}": v for k, v in e.values.items()}, "time.cell_s": time.perf_counter() - t0}
            return {"ok": True, "pruned": e.step, "metrics": metrics, "tags": self._where()}
        except Exception as e:  # a deterministic failure: report it, stay alive for the next cell
            self.dirty = True
            _free_cuda()
            return {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc(),
                    "tags": self._where()}

    # ------------------------------------------------------------ internals

    def _where(self) -> dict[str, str]:
        return {NODE: _node_id() or "", HOST: socket.gethostname(), WORKER_PID: str(os.getpid())}

    def _load(self, name: str, dtype: str, trust_remote_code: bool) -> float:
        """Make `name` the dense model in memory; returns the load time (0 when it was already there)."""
        from tasks.api import load_model, restore, snapshot
        from tasks.models import available_host_memory, check_host_memory, fits_device, linear_bytes

        t0 = time.perf_counter()
        if self.name == name and self.model is not None and (self.snap is not None or not self.dirty):
            if self.dirty:
                restore(self.model, self.snap)
                self.dirty = False
            return 0.0
        self.name = self.model = self.tok = self.snap = None
        self.stats = {}
        gc.collect()
        _free_cuda()
        have = available_host_memory()
        need = check_host_memory(name, dtype, available=have, trust_remote_code=trust_remote_code)
        model, tok = load_model(name, dtype, "cpu", trust_remote_code)
        # The dense copy (on the host: restoring copies host -> device) saves a reload per cell, where
        # the host has room for it beside the model; without it a dirty model is reloaded from disk.
        snap = snapshot(model) if need + linear_bytes(model) <= have else None
        device = _device()
        self.whole = fits_device(model, device, free=self.device_memory)
        self.model, self.tok, self.snap = model.to(device) if self.whole else model, tok, snap
        self.name, self.dirty = name, False
        return time.perf_counter() - t0

    def _run(self, task: dict[str, Any]) -> dict[str, Any]:
        from tasks.api import calibration_dataset, prune

        from .cells import spec_of

        key, opts = task["key"], task["run"]
        self.dirty = True  # until proven otherwise: an exception below leaves the weights unknown
        t_load = self._load(key["model"], key["dtype"], opts["trust_remote_code"])
        metrics: dict[str, float] = {"time.load_s": t_load}
        params: dict[str, Any] = {}
        datasets: dict[str, dict] = {}  # context -> what the run read (tracking.log_datasets)
        if task["kind"] == "prune":
            spec = spec_of(key, batch_size=opts["batch_size"], device=_device(), trust_remote_code=opts["trust_remote_code"])
            if key.get("fidelity"):  # a search's screen (search.fidelity): masks from the dense statistics
                res = self._screen(spec, metrics)
            else:
                res = prune(self.model, self.tok, spec, progress=False)
            datasets["calibration"] = calibration_dataset(res)
            r = res.result
            metrics.update({"sparsity.actual": r["sparsity_actual"], "time.prune_s": r["time_prune_s"],
                            "time.calib_s": r["time_calib_s"]})
            metrics.update({f"memory.peak_{k}_mb": v for k, v in r.get("peak_memory_mb", {}).items()})
            if key["seqlen"] is None:
                params["seqlen"] = r["config"]["seqlen"]
            # a screen's masks are a low-fidelity draft: no model; its run keeps its metrics and losses
            files, artifacts = ({}, {}) if key.get("fidelity") else self._outputs(res, opts)
        else:
            metrics["sparsity.actual"] = 0.0
        t0 = time.perf_counter()
        losses: dict[str, dict] = {}  # split -> lang -> per-window losses: what a verdict's interval resamples
        metrics.update(self._evaluate(key["eval"], opts, key, losses))
        metrics["time.eval_s"] = time.perf_counter() - t0
        p = key["eval"]["ppl"] or (key["eval"].get("test") or {}).get("ppl")  # a held-out cell has its test pass only
        if p:
            from tasks.api import evaluation_dataset

            datasets["evaluation"] = evaluation_dataset(self.model, self.tok, p["languages"], p["data"], p["seqlen"],
                                                        p["nsamples"], p.get("split", "test"))
        with tempfile.TemporaryDirectory(prefix="polyprune-cell-") as tmp:  # a dense model's result and every cell's losses
            if task["kind"] == "baseline":
                files, artifacts = {}, {}
                (Path(tmp) / "result.json").write_text(json.dumps({"config": key, "metrics": metrics}, indent=2, default=str) + "\n")
            if losses:
                (Path(tmp) / LOSSES_FILE).write_text(json.dumps(losses) + "\n")
            more, more_bytes = deliver(Path(tmp), opts.get("artifacts_to"), opts.get("upload_delay_s", 0.0))
            files, artifacts = {**files, **more}, {**artifacts, **more_bytes}
        return {"metrics": metrics, "params": params, "files": files, "artifacts": artifacts, "tags": {}, "datasets": datasets}

    def _outputs(self, res, opts: dict[str, Any]) -> tuple[dict[str, int], dict[str, bytes]]:
        """The pruned model's files (result, masks, calibration; the weights with save_model), delivered."""
        from tasks.api import save_outputs

        with tempfile.TemporaryDirectory(prefix="polyprune-cell-") as tmp:
            out = save_outputs(Path(tmp) / "out", self.model, self.tok, res, save_model=opts["save_model"])
            staged = Path(tmp) / "staged"  # the layout of the model's location: the three files + model/
            for f in sorted(p for p in out.rglob("*") if p.is_file()):
                rel = f.relative_to(out).as_posix()
                name = rel if rel in ("result.json", "masks.safetensors", "calibration.safetensors") else f"model/{rel}"
                if name.startswith("model/") and not opts["save_model"]:
                    continue
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                f.rename(staged / name)
            return deliver(staged, opts.get("artifacts_to"), opts.get("upload_delay_s", 0.0))

    def _screen(self, spec, metrics: dict[str, float]):
        """`tasks.api.prune_from_cache` with the statistics this runner holds; a language not held yet is loaded
        from the disk cache or built (the model is dense here: `_load` restored it). metrics: screen.cache_*."""
        from tasks.api import prune_from_cache, stats_cache
        from tasks.data.langs import parse_mix

        k = (spec.data, spec.seed, spec.nsamples, spec.seqlen)
        have = self.stats.get(k)
        missing = [lang for lang in parse_mix(spec.calib) if have is None or lang not in have.windows]
        build_s = load_s = 0.0
        if missing:
            more = stats_cache(self.model, self.tok, spec, sorted(missing))
            build_s, load_s = (sum(f[what] for f in more.files.values()) for what in ("build_s", "load_s"))
            if have is None:
                have = self.stats[k] = more
            else:  # the languages of this mix the runner did not hold yet
                have.windows.update(more.windows), have.files.update(more.files)
        metrics.update({"screen.cache_build_s": build_s, "screen.cache_load_s": load_s,
                        "screen.cache_bytes": float(have.summary()["bytes"])})
        return prune_from_cache(self.model, self.tok, spec, have)

    def _evaluate(self, ev: dict[str, Any], opts: dict[str, Any], key: dict[str, Any], losses: dict[str, dict]) -> dict[str, float]:
        """The cell's metrics; `losses` gets each perplexity split's per-window losses
        ({split: {lang: {"nll": [...], "tokens": [...]}}}, logged as `losses.json`)."""
        from tasks.api import perplexity, ppl_metrics

        out: dict[str, float] = {}
        # A search with a pruner hears of each valid language (sweeps and other searches have no mailbox).
        report = Reporter(opts["report"]) if opts.get("report") else None
        if ev["ppl"]:
            p = ev["ppl"]
            where = {} if self.whole else {"device": _device(), "blockwise": True}
            ppl, windows = perplexity(self.model, self.tok, p["languages"], data=p["data"], seqlen=p["seqlen"],
                                      nsamples=p["nsamples"], batch_size=opts["ppl_batch_size"], split=p.get("split", "test"),
                                      on_language=report, losses=True, **where)
            out.update(ppl_metrics(ppl))
            losses[p.get("split", "test")] = {lang: {"nll": nll.tolist(), "tokens": tokens.tolist()}
                                              for lang, (nll, tokens) in windows.items()}
        if ev["lm_eval"]:
            from contextlib import nullcontext

            from tasks.evaluation.lmeval import run_lmeval
            from tasks.evaluation.offload import dispatched, gpu_budgets, offload_map

            le = ev["lm_eval"]
            placed = nullcontext() if self.whole else dispatched(self.model, offload_map(self.model, gpu_budgets()))
            with placed:
                res = run_lmeval(self.model, self.tok, le["tasks"], num_fewshot=le["num_fewshot"], limit=le["limit"],
                                 batch_size=opts["lm_eval_batch_size"], include_paths=le["include_paths"])
            out.update({k: float(v) for k, v in res["metrics"].items() if isinstance(v, (int, float))})
        if ev.get("test"):  # a search trial's held-out pass: logged as test.*, never told to the sampler
            out.update({f"test.{k}": v for k, v in self._evaluate(ev["test"], {**opts, "report": None}, key, losses).items()})
        return out


class Pruned(Exception):
    """The driver's pruner stopped this trial after language `step` (`values`: the valid ppl so far)."""

    def __init__(self, step: int, values: dict[str, float]):
        super().__init__(f"pruned after step {step}")
        self.step, self.values = step, values


class Reporter:
    """`on_language` for `tasks.api.perplexity`: posts each language's value to the search's
    mailbox (`{"box": actor, "trial": number}`, search.early_stop), which answers with the driver's
    verdict on it: pruned, the cell stops there (Pruned)."""

    def __init__(self, report: dict[str, Any]):
        self.box, self.trial, self.values = report["box"], report["trial"], {}

    def __call__(self, step: int, lang: str, value: float) -> None:
        import ray

        self.values[lang] = value
        if ray.get(self.box.post.remote(self.trial, step, value)):
            raise Pruned(step, self.values)


def deliver(folder: Path, to: dict[str, str] | None, delay_s: float = 0.0) -> tuple[dict[str, int], dict[str, bytes]]:
    """Write the files of `folder` into the logged model's artifact location `to` (through
    MLflow's artifact repository: a shared folder, an object store or a tracking server's
    proxied uploads), so no artifact byte passes through the driver; returns ({path: size}, {}).
    Without `to` (a runner outside a sweep), the bytes themselves: ({}, {path: bytes}).
    `delay_s` is a test hook: a pause after each file, to kill a worker mid-upload."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if to is None:
        return {}, {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(to["uri"], tracking_uri=to["tracking_uri"])
    files = {}
    for p in paths:
        rel = p.relative_to(folder)
        repo.log_artifact(str(p), rel.parent.as_posix() if rel.parent != Path(".") else None)
        files[rel.as_posix()] = p.stat().st_size
        if delay_s:
            time.sleep(delay_s)
    return files, {}


def _ray():
    """The ray module when this process is a Ray worker or driver, else None (never imports it)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def _device() -> str:
    import torch

    ray = _ray()
    # Under Ray only an actor given GPUs may use one (Ray sets CUDA_VISIBLE_DEVICES for it);
    # outside Ray (the benchmark's fresh processes) any GPU there is.
    has_gpu = bool(ray.get_gpu_ids()) if ray is not None else True
    return "cuda" if has_gpu and torch.cuda.is_available() else "cpu"


def _node_id() -> str | None:
    ray = _ray()
    return ray.get_runtime_context().get_node_id() if ray is not None else None


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
