"""The Python API the orchestrator (and users) call. Plain data in, plain data out.

    model, tok = load_model("path/or/hub-id")
    res = prune(model, tok, PruneSpec(model="...", method="wanda", sparsity="0.5", calib="en,sw"))
    save_outputs("out/", model, tok, res)
    ppl = perplexity(model, tok, ["en", "sw"], data="builtin")   # {"en": 12.3, "sw": 20.1}, on split "test"
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.calibration import HELD_OUT, Calibration, eval_key, eval_windows, fingerprint, sample_calibration
from .data.langs import ALLOCATIONS, allocate, canonical_mix, parse_mix
from .data.sources import get_source
from .errors import UserError
from .evaluation import perplexity as _ppl
from .models import block_linears, find_blocks, load_model, max_positions, restore, snapshot  # noqa: F401 (API)
from .outdir import check_out_dir, remove_stale_temps  # noqa: F401 (API)
from .pruning import METHODS, SCHEDULES
from .versions import versions  # noqa: F401 (API)
from .pruning.base import convert, hp_names, parse_hp
from .pruning.masks import save_masks
from .pruning.pipeline import prune_blocks, schedule_targets
from .pruning.schedules import FileSchedule, ListSchedule
from .pruning.sparsity import parse_sparsity


@dataclass
class PruneSpec:
    """Everything that determines one pruned model. Unknown hp keys are rejected by `check_spec`."""

    model: str
    method: str
    sparsity: str  # "0.5" (unstructured fraction in [0, 1)) or "N:M"
    calib: str = "en"  # "en" | "en,de" | "en=0.7,de=0.3"
    # windows per language: proportional to the mix with a floor of one, or equal (mwanda/mria only,
    # whose scores weight the languages by the mix); docs/mwanda.md#allocation
    allocation: str = "proportional"
    data: str = "builtin"  # local folder, "builtin", or a hub corpus name (mc4, culturax, wikipedia, flores)
    nsamples: int = 128
    seqlen: int | None = None  # None: min(2048, the model's max positions)
    seed: int = 0
    schedule: str | list[float] = "uniform"  # uniform | owl | cwl | a per-block list, or a YAML/JSON file holding one
    hp: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8  # calibration forward batch
    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _schedule(spec: PruneSpec, hp: dict):
    if isinstance(spec.schedule, (list, tuple)):
        if hp:
            raise UserError("hp", f"{', '.join(hp)} do not apply to an explicit per-block schedule")
        return ListSchedule(spec.schedule)
    if spec.schedule in SCHEDULES:
        cls = SCHEDULES.get(spec.schedule)
        return cls(parse_hp(cls.Params, hp, f"schedule {spec.schedule}"))
    if os.path.isfile(spec.schedule):
        if hp:
            raise UserError("hp", f"{', '.join(hp)} do not apply to an explicit schedule file")
        return FileSchedule(spec.schedule)
    raise UserError("schedule", f"unknown schedule {spec.schedule!r}; allowed: {', '.join(SCHEDULES.names())}, or a per-block file")


def _resolve(spec: PruneSpec):
    """Validate and canonicalise everything that does not need the model: (spec, method, schedule, mix, source)."""
    method_cls = METHODS.get(spec.method, "method")
    sparsity = parse_sparsity(spec.sparsity)
    mix = parse_mix(spec.calib)
    source = get_source(spec.data)
    for lang in mix:
        source.check_language(lang, "calib")
    for name, value in (("nsamples", spec.nsamples), ("batch_size", spec.batch_size)):
        if convert(value, int, None, name) <= 0:
            raise UserError(name, f"must be a positive integer, got {value!r}")
    if spec.seqlen is not None and convert(spec.seqlen, int, None, "seqlen") <= 0:
        raise UserError("seqlen", f"must be a positive integer, got {spec.seqlen!r}")
    seed = convert(spec.seed, int, None, "seed")
    if spec.allocation not in ALLOCATIONS:
        raise UserError("allocation", f"must be one of {', '.join(ALLOCATIONS)}, got {spec.allocation!r}")
    if spec.allocation != "proportional" and not method_cls.weights_languages:
        raise UserError("allocation", f"{spec.allocation} needs a method that weights per-language statistics by the mix "
                                      f"({', '.join(n for n in METHODS.names() if METHODS.get(n).weights_languages)}); "
                                      f"{spec.method} pools them, so its mix is the share of windows: use proportional")
    allocate(mix, int(spec.nsamples), spec.allocation)  # enough windows for every language with weight
    method_keys = set(hp_names(method_cls.Params))
    method = method_cls(parse_hp(method_cls.Params, {k: v for k, v in spec.hp.items() if k in method_keys}, f"method {spec.method}"))
    schedule_hp = {k: v for k, v in spec.hp.items() if k not in method_keys}
    try:
        schedule = _schedule(spec, schedule_hp)
    except UserError as e:
        if e.field == "hp" and "unknown hyperparameter" in e.message:
            raise UserError("hp", f"unknown hyperparameter {next(iter(schedule_hp))!r} for method {spec.method} "
                                  f"(allowed: {', '.join(sorted(method_keys)) or 'none'}) or schedule {spec.schedule}") from None
        raise
    if sparsity.nm and spec.schedule != "uniform":
        raise UserError("schedule", f"N:M sparsity ({sparsity}) takes the uniform schedule only, got {spec.schedule!r}")
    hp = {**vars(method.params), **(vars(schedule.params) if schedule.params is not None else {})}
    resolved = PruneSpec(**{**spec.to_dict(), "sparsity": str(sparsity), "calib": canonical_mix(mix), "seed": seed,
                            "nsamples": int(spec.nsamples), "batch_size": int(spec.batch_size), "hp": hp,
                            "seqlen": None if spec.seqlen is None else int(spec.seqlen)})
    return resolved, sparsity, method, schedule, mix, source


def check_spec(spec: PruneSpec) -> PruneSpec:
    """Model-independent validation; returns the canonical spec (all hyperparameters filled in)."""
    return _resolve(spec)[0]


def check_model(model, spec: PruneSpec) -> int:
    """Checks that need the model; returns the resolved seqlen."""
    sparsity = parse_sparsity(spec.sparsity)
    _, blocks = find_blocks(model)
    if sparsity.nm:
        for i, block in enumerate(blocks):
            for name, lin in block_linears(block).items():
                if lin.in_features % sparsity.m:
                    raise UserError("sparsity", f"{sparsity} needs every layer's input width divisible by {sparsity.m}; "
                                                f"block {i} {name} has {lin.in_features}")
    positions = max_positions(model)
    seqlen = spec.seqlen or min(2048, positions or 2048)
    if positions and seqlen > positions:
        raise UserError("seqlen", f"{seqlen} is beyond the model's {positions} positions")
    return seqlen


@dataclass
class PruneResult:
    masks: dict[str, torch.Tensor]
    calibration: Calibration
    result: dict[str, Any]


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError("device", f"{name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device", f"{name!r} requested but CUDA is not available")
    return device


def prune(model, tokenizer, spec: PruneSpec, progress: bool = True) -> PruneResult:
    """Prune `model` in place as `spec` says (block by block on spec.device)."""
    spec, sparsity, method, schedule, mix, source = _resolve(spec)
    device = _device(spec.device)
    seqlen = check_model(model, spec)
    spec = PruneSpec(**{**spec.to_dict(), "seqlen": seqlen})
    home = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    calib = sample_calibration(source, tokenizer, mix, spec.nsamples, seqlen, spec.seed, spec.allocation)
    t_calib = time.perf_counter() - t0
    lang, n_lang = calib.language, len(calib.languages)
    n_blocks = len(find_blocks(model)[1])
    try:
        if sparsity.nm:
            targets = [sparsity.fraction] * n_blocks
        else:
            targets = schedule_targets(model, schedule, sparsity.fraction, calib.input_ids, lang, n_lang, spec.batch_size, device, progress)
        masks, blocks = prune_blocks(model, method, targets, sparsity.nm, calib.input_ids, lang, n_lang, spec.batch_size, device,
                                     progress, weights=calib.weights)
    finally:
        model.to(home)
    t_prune = time.perf_counter() - t0 - t_calib
    zeros = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    counts = {l: int((lang == i).sum()) for i, l in enumerate(calib.languages)}
    result = {
        "config": spec.to_dict(),
        "sparsity_target": sparsity.fraction,
        "sparsity_actual": zeros / total,
        "sparsity_per_block": {"target": [b["target"] for b in blocks], "actual": [b["actual"] for b in blocks]},
        "blocks": blocks,
        "calibration": {"languages": calib.languages, "samples": counts, "weights": dict(zip(calib.languages, calib.weights)),
                        "allocation": spec.allocation, "tokens": int(calib.input_ids.numel()), "fingerprint": calib.fingerprint},
        "time_calib_s": t_calib,
        "time_prune_s": t_prune,
        "peak_memory_mb": {
            # process-wide high-water mark of resident memory (Linux reports KiB)
            "cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **({"cuda_allocated": torch.cuda.max_memory_allocated(device) / 2**20} if device.type == "cuda" else {}),
        },
        "versions": versions(),
    }
    return PruneResult(masks, calib, result)


def save_outputs(out: str | os.PathLike, model, tokenizer, res: PruneResult, save_model: bool = True) -> Path:
    """Write model + tokenizer, masks.safetensors, calibration.safetensors and result.json.

    Everything goes to a hidden sibling folder first and is renamed into place at the
    end, so a killed run never leaves a folder that looks complete."""
    from safetensors.torch import save_file

    out = check_out_dir(out)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if save_model:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        save_masks(tmp / "masks.safetensors", res.masks, {"base_model": res.result["config"]["model"]})
        save_file({"input_ids": res.calibration.input_ids.contiguous(), "language": res.calibration.language.contiguous()},
                  str(tmp / "calibration.safetensors"), metadata={"languages": ",".join(res.calibration.languages),
                                                                      "weights": ",".join(map(repr, res.calibration.weights))})
        (tmp / "result.json").write_text(json.dumps(res.result, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def eval_seqlen(model, seqlen: int | None) -> int:
    """The evaluation window: `seqlen`, else min(2048, the model's positions)."""
    positions = max_positions(model)
    seqlen = seqlen or min(2048, positions or 2048)
    if positions and seqlen > positions:
        raise UserError("seqlen", f"{seqlen} is beyond the model's {positions} positions")
    return seqlen


def perplexity(model, tokenizer, languages: list[str], data: str = "builtin", seqlen: int | None = None,
               nsamples: int | None = None, batch_size: int = 8, split: str = "test", device: str | None = None,
               blockwise: bool | None = None, on_language=None, losses: bool = False):
    """{lang: perplexity} on the source's held-out text (never the calibration text): split "test"
    (what results quote) or "valid" (what searches and any tuning look at). `device`: where to
    compute (default: where the model is); `blockwise`: one decoder block at a time on it, the model
    staying where it is (None: when the model does not fit the device). `on_language(index, lang,
    ppl)`: called as each language finishes (a search reports it to its pruner; raising stops here).
    `losses`: return ({lang: ppl}, {lang: (summed NLL per window, tokens per window)}), from the same pass."""
    dev = None if device is None else _device(device)
    if split not in HELD_OUT:
        raise UserError("split", f"perplexity reads held-out text; allowed: {', '.join(HELD_OUT)}, got {split!r}")
    source = get_source(data)
    for lang in languages:
        source.check_language(lang, "ppl")
    return _ppl.perplexity(model, tokenizer, source, languages, eval_seqlen(model, seqlen), nsamples, batch_size, split,
                           dev, blockwise, on_language, losses)


def calibration_dataset(res: PruneResult) -> dict[str, Any]:
    """What a pruned model was calibrated on, as a record's dataset: name (source and mix), digest
    (the calibration fingerprint), source and profile (tokens per language)."""
    cfg, calib = res.result["config"], res.calibration
    seqlen = calib.input_ids.shape[1]
    tokens = {l: int((calib.language == i).sum()) * seqlen for i, l in enumerate(calib.languages)}
    return {"name": f"{_data_name(cfg['data'])} calib {canonical_mix(parse_mix(cfg['calib']))}", "digest": calib.fingerprint,
            "source": {"data": cfg["data"], "split": "calib"}, "profile": {"tokens": tokens, "seqlen": seqlen,
                                                                           "nsamples": int(calib.input_ids.shape[0])}}


def evaluation_dataset(model, tokenizer, languages: list[str], data: str = "builtin", seqlen: int | None = None,
                       nsamples: int | None = None, split: str = "test") -> dict[str, Any]:
    """The held-out windows `perplexity` reads with the same arguments, as a record's dataset; the
    digest covers every language's windows and the count taken."""
    source, seqlen = get_source(data), eval_seqlen(model, seqlen)
    keys = [eval_key(source, tokenizer, lang, seqlen, split) for lang in languages]
    tokens = {lang: int(eval_windows(source, tokenizer, lang, seqlen, nsamples, split).numel()) for lang in languages}
    return {"name": f"{_data_name(data)} {split} {','.join(languages)}", "digest": fingerprint({"windows": keys, "nsamples": nsamples}),
            "source": {"data": data, "split": split}, "profile": {"tokens": tokens, "seqlen": seqlen, "nsamples": nsamples}}


def _data_name(data: str) -> str:
    # a folder by its own name, so dataset names stay short; the full path is the dataset's source
    return Path(data).name if os.path.sep in data else data


def ppl_metrics(ppl: dict[str, float]) -> dict[str, float]:
    """MLflow-style metrics: ppl.<lang> and ppl.mean, the geometric mean over languages
    (exp of the mean log-perplexity), so one high-perplexity language does not dominate."""
    import math

    out = {f"ppl.{k}": v for k, v in ppl.items()}
    if ppl:
        out["ppl.mean"] = math.exp(sum(math.log(v) for v in ppl.values()) / len(ppl))
    return out
