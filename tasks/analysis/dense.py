"""Dense statistics of the analyses inside pruned models (`inside.analyze`): the settings
(`AnalysisSpec`, checked by `check_spec`), the held-out windows of each language, and one
dense forward per language (each FFN neuron's firing rate, each block's mean output),
cached on disk by the model's fingerprint and the exact text."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.builtin import cache_root
from ..data.calibration import HELD_OUT, tokenizer_fingerprint
from ..data.sources import get_source
from ..errors import UserError
from ..models import block_linears, find_blocks, max_positions
from ..pruning.pipeline import capture
from .neurons import BAR_RATE, FILTER_RATE, TOP_RATE, ffn_linears

CACHE_VERSION = 1  # bump when dense statistics change meaning, so cached ones are not reused


@dataclass
class AnalysisSpec:
    languages: list[str]
    data: str = "builtin"
    split: str = "test"  # held-out text: "test" (what results quote) or "valid"
    seqlen: int | None = None  # None: min(512, the model's max positions)
    nsamples: int = 16  # windows per language, spread evenly over the held-out text
    batch_size: int = 8
    device: str = "cpu"
    top_rate: float = TOP_RATE  # LAPE thresholds, Tang et al. 2024 (neurons.py)
    filter_rate: float = FILTER_RATE
    bar_rate: float = BAR_RATE
    rank: int | None = None  # language-specific subspace rank; None: all L - 1 directions
    cache: bool = True  # dense statistics on disk

    @classmethod
    def from_dict(cls, d: dict) -> "AnalysisSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise UserError(key, f"unknown analysis setting; allowed: {', '.join(sorted(names))}")
        if "languages" not in d:
            raise UserError("languages", "required: a list of language codes")
        return cls(**d)


@dataclass
class DenseStats:
    """One language's statistics of the dense model on its windows."""

    probs: list[torch.Tensor | None]  # per block: share of tokens with down-projection input > 0, [ffn]
    means: torch.Tensor  # [blocks, d] float64: mean output of each block
    tokens: int


def check_spec(model, spec: AnalysisSpec):
    """(source, seqlen) after checking every setting; raises UserError naming the field."""
    langs = spec.languages
    if isinstance(langs, str) or not isinstance(langs, (list, tuple)) or not langs or not all(isinstance(l, str) and l for l in langs):
        raise UserError("languages", f"must be a non-empty list of language codes, got {langs!r}")
    if len(set(langs)) != len(langs):
        raise UserError("languages", f"each language once, got {', '.join(langs)}")
    if spec.split not in HELD_OUT:
        raise UserError("split", f"analyses read held-out text; allowed: {', '.join(HELD_OUT)}, got {spec.split!r}")
    for name in ("nsamples", "batch_size"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(name, f"must be a positive integer, got {value!r}")
    for name in ("top_rate", "filter_rate", "bar_rate"):
        value = getattr(spec, name)
        if not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise UserError(name, f"must be a fraction in (0, 1], got {value!r}")
    if spec.rank is not None and (not isinstance(spec.rank, int) or spec.rank <= 0):
        raise UserError("rank", f"must be a positive integer or null, got {spec.rank!r}")
    try:
        device = torch.device(spec.device)
    except (RuntimeError, TypeError):
        raise UserError("device", f"{spec.device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device", f"{spec.device!r} requested but CUDA is not available")
    source = get_source(spec.data)
    for lang in langs:
        source.check_language(lang, "languages")
    positions = max_positions(model)
    seqlen = spec.seqlen if spec.seqlen is not None else min(512, positions or 512)
    if not isinstance(seqlen, int) or seqlen <= 1 or (positions and seqlen > positions):
        raise UserError("seqlen", f"must be an integer in [2, {positions or 'max positions'}], got {spec.seqlen!r}")
    return source, seqlen


def text_windows(source, tokenizer, lang: str, split: str, seqlen: int, nsamples: int) -> torch.Tensor:
    """Up to `nsamples` non-overlapping `seqlen`-token windows of a language's text in `split`,
    spread evenly over it: int64 [n, seqlen]."""
    docs = source.documents(lang, split)
    ids = tokenizer(["\n\n".join(docs)], add_special_tokens=False)["input_ids"][0] if docs else []
    n = len(ids) // seqlen
    if n == 0:
        raise UserError("languages", f"{split} text of {lang!r} in {source.name!r} has {len(ids)} tokens, fewer than seqlen={seqlen}")
    windows = torch.tensor(ids[: n * seqlen], dtype=torch.int64).view(n, seqlen)
    pick = torch.linspace(0, n - 1, min(n, nsamples)).round().long().unique()
    return windows[pick]


def model_fingerprint(model) -> str:
    """Config, dtypes and a strided sample of every parameter: cheap, and differs between checkpoints."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:24]


def block_output(o):
    """A decoder block's hidden states (blocks return a tuple or the tensor)."""
    return o[0] if isinstance(o, (tuple, list)) else o


@torch.no_grad()
def _dense_pass(model, windows, batch_size, device, progress, desc) -> DenseStats:
    _, blocks = find_blocks(model)
    inps, calls = capture(model, windows, batch_size, device)
    probs, means = [], []
    for i, block in enumerate(tqdm(blocks, desc=desc, disable=not progress, leave=False)):
        home = next(block.parameters()).device
        block.to(device)
        ffn = ffn_linears(block)
        fired = []
        hook = None
        if ffn is not None:
            down = block_linears(block)[ffn[0]]
            hook = down.register_forward_hook(lambda m, inp, o: fired.append((inp[0] > 0).reshape(-1, inp[0].shape[-1]).sum(0)))
        total = None
        try:
            for b, (args, kw) in enumerate(calls[i]):
                inps[b] = block_output(block(inps[b], *args, **kw))
                s = inps[b].reshape(-1, inps[b].shape[-1]).double().sum(0)
                total = s if total is None else total + s
        finally:
            if hook is not None:
                hook.remove()
        tokens = sum(x.shape[0] * x.shape[1] for x in inps)
        probs.append(torch.stack(fired).sum(0).double().cpu() / tokens if fired else None)
        means.append(total.cpu() / tokens)
        block.to(home)
    return DenseStats(probs, torch.stack(means), int(windows.numel()))


def _cache_path(key: dict):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "analysis" / f"dense-{digest}.safetensors"


def _save(path, stats: DenseStats) -> None:
    tensors = {"means": stats.means.contiguous(), "tokens": torch.tensor([stats.tokens])}
    tensors.update({f"probs.{i}": p.contiguous() for i, p in enumerate(stats.probs) if p is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load(path) -> DenseStats:
    t = load_file(str(path))
    n = t["means"].shape[0]
    return DenseStats([t.get(f"probs.{i}") for i in range(n)], t["means"], int(t["tokens"][0]))


@torch.no_grad()
def dense_statistics(model, tokenizer, spec: AnalysisSpec, progress: bool = True) -> dict[str, DenseStats]:
    """{lang: DenseStats} of the dense `model`, from the on-disk cache when it holds them
    (key: model fingerprint, text source, tokenizer, split, seqlen, nsamples)."""
    source, seqlen = check_spec(model, spec)
    device = torch.device(spec.device)
    fingerprint = model_fingerprint(model) if spec.cache else None
    home = next(model.parameters()).device
    out = {}
    try:
        for lang in spec.languages:
            key = {"v": CACHE_VERSION, "model": fingerprint, "source": source.fingerprint, "tok": tokenizer_fingerprint(tokenizer),
                   "lang": lang, "split": spec.split, "seqlen": seqlen, "nsamples": spec.nsamples}
            path = _cache_path(key)
            if spec.cache and path.exists():
                out[lang] = _load(path)
                continue
            windows = text_windows(source, tokenizer, lang, spec.split, seqlen, spec.nsamples)
            out[lang] = _dense_pass(model, windows, spec.batch_size, device, progress, f"dense statistics {lang}")
            if spec.cache:
                _save(path, out[lang])
    finally:
        model.to(home)
    return out
