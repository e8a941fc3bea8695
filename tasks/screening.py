"""Low-fidelity prunes from the dense model's per-language statistics, computed once (issue 29).

    cache = stats_cache(model, tok, spec)                 # one dense pass per calibration language, or the files
    res = prune_from_cache(model, tok, spec_of_a_trial, cache)   # masks for every block at once
    ...evaluate, restore(model, dense), next trial

`stats_cache` loads, or builds and stores, each calibration language's per-window statistics of the
DENSE model (tasks/pruning/screen.py; files: tasks/pruning/stats_cache.py) for the spec's data, seed,
nsamples and seqlen. `prune_from_cache` forms a mix's statistics from them by arithmetic and prunes
every block from them through the method's own `prune`, with no calibration forward and no
propagation: the approximation is that blocks after the first see the dense model's inputs instead
of the pruned model's (docs/search.md "Screening at low fidelity"). Wanda-family methods (wanda,
mwanda, ria, mria) and magnitude are served, with any schedule; SparseGPT is refused.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .api import PruneResult, PruneSpec, _device, _resolve, check_model, summarize
from .data.builtin import cache_root
from .data.calibration import sample_calibration, tokenizer_fingerprint
from .errors import UserError
from .models import block_linears, find_blocks, weights_digest
from .pruning.screen import check_served, dense_window_stats, fill_stats, positive_counts, screen_blocks, screen_targets
from .pruning.stats import language_weights, stat_dtype
from .pruning.stats_cache import FORMAT, StaleCache, cache_path, load, save


@dataclass
class DenseStats:
    """The dense model's per-window statistics of some calibration languages, in memory.

    `key`: what every language's file shares (model weights digest, source, tokenizer, seed,
    nsamples, seqlen, device type); `windows`: {language: {"<block>.<linear>.sumsq" | ".pos": [nsamples, C]}};
    `files`: {language: {path, bytes, build_s (0: loaded), load_s, rebuilt (why an existing file was
    not trusted, or None)}}."""

    key: dict
    windows: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> dict:
        """{bytes, build_s, languages: files}: the cache's size on disk and what building it cost."""
        return {"bytes": sum(f["bytes"] for f in self.files.values()),
                "build_s": sum(f["build_s"] for f in self.files.values()), "languages": self.files}


def _shapes(model, nsamples: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    _, blocks = find_blocks(model)
    out = {}
    for i, block in enumerate(blocks):
        for name, lin in block_linears(block).items():
            out[f"{i}.{name}.sumsq"] = ((nsamples, lin.in_features), stat_dtype(lin.weight))
            if positive_counts(name):
                out[f"{i}.{name}.pos"] = ((nsamples, lin.in_features), torch.int32)
    return out


def stats_cache(model, tokenizer, spec: PruneSpec, languages: list[str] | None = None, root: str | Path | None = None,
                progress: bool = False) -> DenseStats:
    """The dense statistics of `languages` (default: every language of spec.calib) for spec's data,
    seed, nsamples and seqlen, loaded from `root` (default: the cache root, beside the token caches)
    or built there, one dense calibration pass per missing language on spec.device. A search builds
    it once for all the languages it mixes; `model` must be the dense model."""
    spec, _, _, _, mix, source = _resolve(spec)
    device = _device(spec.device)
    seqlen = check_model(model, spec)
    langs = list(languages) if languages is not None else sorted(mix)
    base = {"format": FORMAT, "model": weights_digest(model), "source": source.fingerprint, "tok": tokenizer_fingerprint(tokenizer),
            "seed": spec.seed, "nsamples": spec.nsamples, "seqlen": seqlen, "device": device.type}
    shapes = _shapes(model, spec.nsamples)
    out = DenseStats(base)
    for lang in langs:
        source.check_language(lang, "calib")
        # the language alone: the same windows, in the same order, as any mix's first ones of it
        calib = sample_calibration(source, tokenizer, {lang: 1.0}, spec.nsamples, seqlen, spec.seed)
        key = {**base, "lang": lang, "calibration": calib.fingerprint}
        path = cache_path(Path(root) if root is not None else cache_root(), key)
        info, tensors, t0 = {"path": str(path), "build_s": 0.0, "rebuilt": None}, None, time.perf_counter()
        if path.exists():
            try:
                tensors = load(path, key, shapes)
            except StaleCache as e:
                info["rebuilt"] = str(e)
                warnings.warn(f"screening cache {path}: {e}; rebuilding it", stacklevel=2)
        info["load_s"] = time.perf_counter() - t0
        if tensors is None:
            t0, home = time.perf_counter(), next(model.parameters()).device
            try:
                tensors = dense_window_stats(model, calib.input_ids, spec.batch_size, device, progress)
            finally:
                model.to(home)
            save(path, tensors, key)
            info["build_s"] = time.perf_counter() - t0
        info["bytes"] = path.stat().st_size
        out.windows[lang], out.files[lang] = tensors, info
    return out


def _check_cache(cache: DenseStats, spec: PruneSpec, source, tokenizer, seqlen: int, device, languages, counts) -> None:
    want = {"source": source.fingerprint, "tok": tokenizer_fingerprint(tokenizer), "seed": spec.seed, "seqlen": seqlen,
            "device": device.type, "format": FORMAT}
    bad = [k for k, v in want.items() if cache.key.get(k) != v]
    if bad:
        raise UserError("cache", f"the statistics were computed for another {bad[0]} ({cache.key.get(bad[0])!r}, "
                                 f"this prune has {want[bad[0]]!r}); build them with stats_cache for this spec")
    missing = [l for l in languages if l not in cache.windows]
    if missing:
        raise UserError("cache", f"no statistics of {missing[0]!r}; the cache holds {', '.join(cache.windows) or 'none'}")
    if max(counts, default=0) > cache.key["nsamples"]:
        raise UserError("nsamples", f"the mix needs {max(counts)} windows of a language, the cache holds {cache.key['nsamples']}")


def prune_from_cache(model, tokenizer, spec: PruneSpec, cache: DenseStats | None = None, progress: bool = False) -> PruneResult:
    """Prune `model` in place as `spec` says, at low fidelity: the mix's statistics formed from the
    dense model's cached per-language statistics (`cache`, else `stats_cache(model, tokenizer, spec)`),
    masks for every block at once. Same result as `prune` (masks, calibration, result), with
    result["fidelity"] = {"statistics": "dense-cache", "cache": the cache's summary}."""
    spec, sparsity, method, schedule, mix, source = _resolve(spec)
    check_served(method, spec.method)
    device = _device(spec.device)
    seqlen = check_model(model, spec)
    spec = PruneSpec(**{**spec.to_dict(), "seqlen": seqlen})
    t0 = time.perf_counter()
    calib = sample_calibration(source, tokenizer, mix, spec.nsamples, seqlen, spec.seed, spec.allocation)
    langs, counts = calib.languages, [int((calib.language == i).sum()) for i in range(len(calib.languages))]
    needs_stats = method.needs_calibration or (schedule.needs_stats and not sparsity.nm)
    if cache is None and needs_stats:
        cache = stats_cache(model, tokenizer, spec, langs, progress=progress)
    elif cache is not None:
        _check_cache(cache, spec, source, tokenizer, seqlen, device, langs, counts)
    t_calib = time.perf_counter() - t0
    windows = [cache.windows[l] for l in langs] if cache is not None else []

    def fill(i, name, stats):
        return fill_stats(stats, windows, counts, seqlen, f"{i}.{name}")

    home = next(model.parameters()).device
    try:
        n_blocks = len(find_blocks(model)[1])
        targets = [sparsity.fraction] * n_blocks if sparsity.nm else screen_targets(model, schedule, sparsity.fraction, fill,
                                                                                      len(langs), device)
        masks, blocks = screen_blocks(model, method, targets, sparsity.nm, fill, language_weights(len(langs), calib.weights),
                                      device, progress)
    finally:
        model.to(home)
    t_prune = time.perf_counter() - t0 - t_calib
    result = summarize(spec, sparsity, masks, blocks, calib, t_calib, t_prune, device)
    result["fidelity"] = {"statistics": "dense-cache", "cache": cache.summary() if cache is not None else None}
    return PruneResult(masks, calib, result)
