"""Analyses inside pruned models, on held-out text: language-specific neurons kept
(neurons.py), representation drift (drift.py) and where the drift lies, in the shared
direction or the language-specific subspace (subspace.py).

    model, tok = load_model(base)                       # the dense base model
    spec = AnalysisSpec(languages=["en", "sw"], data="builtin")
    out = analyze(model, tok, {"wanda-en": "runs/a", "wanda-sw": "runs/b/masks.safetensors"}, spec)
    out["runs"]["wanda-en"]["metrics"]                  # {"analysis.cka.en": ..., ...}
    out["layers"], out["kept"]                          # rows for heatmaps and CSVs

Cost: dense statistics take one dense forward per language and are cached on disk (keyed
by the model's fingerprint and the exact text), then one forward per language shared by
all runs plus one per (run, language). Blocks move to the device one at a time, as in
pruning; each run's hidden states of the language's windows stay on the device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.calibration import HELD_OUT, cache_root, tokenizer_fingerprint
from ..data.sources import get_source
from ..errors import UserError
from ..models import block_linears, find_blocks, max_positions
from ..pruning.pipeline import capture
from .drift import DriftStats
from .neurons import BAR_RATE, FILTER_RATE, TOP_RATE, ffn_linears, kept_share, specific_neurons
from .runs import RunWeights
from .subspace import language_subspace

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


def _out(o):
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
                inps[b] = _out(block(inps[b], *args, **kw))
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


def _neuron_sets(dense: dict[str, DenseStats], langs: list[str], spec: AnalysisSpec):
    """Per language, {block: neuron indices} of its specific neurons, pooled over all blocks."""
    ffn_blocks = [i for i, p in enumerate(dense[langs[0]].probs) if p is not None]
    if not ffn_blocks:
        return ffn_blocks, {l: {} for l in langs}
    probs = torch.stack([torch.cat([dense[l].probs[i] for i in ffn_blocks]) for l in langs])
    offsets = torch.tensor([0] + [dense[langs[0]].probs[i].numel() for i in ffn_blocks]).cumsum(0)
    sets = {}
    for lang, chosen in zip(langs, specific_neurons(probs, spec.top_rate, spec.filter_rate, spec.bar_rate)):
        sets[lang] = {}
        for k, i in enumerate(ffn_blocks):
            inside = chosen[(chosen >= offsets[k]) & (chosen < offsets[k + 1])] - offsets[k]
            if inside.numel():
                sets[lang][i] = inside
    return ffn_blocks, sets


def _kept_rows(model, runs: dict[str, RunWeights], sets, langs) -> list[dict]:
    """Per run and language: kept share of the specific neurons' down-projection columns and
    producer rows; language "all": every neuron (the run's overall density there)."""
    prefix, blocks = find_blocks(model)
    rows = []
    for name, run in runs.items():
        counts = {l: [0, 0, 0, 0] for l in [*langs, "all"]}
        for i, block in enumerate(blocks):
            ffn = ffn_linears(block)
            if ffn is None:
                continue
            linears = block_linears(block)
            keep = {n: run.keep(f"{prefix}.{i}.{n}.weight", linears[n].weight) for n in [ffn[0], *ffn[1]]}
            every = torch.arange(linears[ffn[0]].in_features)
            for lang in counts:
                neurons = every if lang == "all" else sets[lang].get(i)
                if neurons is None:
                    continue
                k, n = kept_share(keep[ffn[0]], neurons, 1)
                counts[lang][0] += k
                counts[lang][1] += n
                for p in ffn[1]:
                    k, n = kept_share(keep[p], neurons, 0)
                    counts[lang][2] += k
                    counts[lang][3] += n
        for lang, (kd, nd, ki, ni) in counts.items():
            n_neurons = sum(len(v) for v in sets[lang].values()) if lang != "all" else None
            rows.append({"run": name, "lang": lang, "neurons": n_neurons,
                         "down_kept": kd / nd if nd else None, "in_kept": ki / ni if ni else None})
    return rows


@torch.no_grad()
def _drift_rows(model, tokenizer, source, seqlen, runs: dict[str, RunWeights], subspaces, spec, progress) -> list[dict]:
    prefix, blocks = find_blocks(model)
    device = torch.device(spec.device)
    rows = []
    for lang in spec.languages:
        windows = text_windows(source, tokenizer, lang, spec.split, seqlen, spec.nsamples)
        inps, calls = capture(model, windows, spec.batch_size, device)
        states = {name: [x.clone() for x in inps] for name in runs}
        for i, block in enumerate(tqdm(blocks, desc=f"analysis {lang} ({len(runs)} runs)", disable=not progress, leave=False)):
            home = next(block.parameters()).device
            block.to(device)
            linears = block_linears(block)
            dense_w = {n: lin.weight.detach().clone() for n, lin in linears.items()}
            outs = [_out(block(inps[b], *args, **kw)) for b, (args, kw) in enumerate(calls[i])]
            flat = [o.reshape(-1, o.shape[-1]).double() for o in outs]
            sums = (sum(x.sum(0) for x in flat), sum(x.T @ x for x in flat))
            del flat
            d = outs[0].shape[-1]
            directions = {k: v.to(device) for k, v in subspaces[i].items()}
            for name, run in runs.items():
                try:
                    for n, lin in linears.items():
                        w = run.weight(f"{prefix}.{i}.{n}.weight", dense_w[n])
                        if w is not None:
                            lin.weight.copy_(w)
                    acc = DriftStats(directions, dense=sums)
                    for b, (args, kw) in enumerate(calls[i]):
                        states[name][b] = _out(block(states[name][b], *args, **kw))
                        acc.add(outs[b], states[name][b])
                finally:
                    for n, lin in linears.items():
                        lin.weight.copy_(dense_w[n])
                s = acc.summary()
                rows.append({"run": name, "lang": lang, "layer": i, "cka": s["cka"], "cosine": s["cosine"], "drift": s["drift"],
                             "shared_share": s["share_shared"], "specific_share": s["share_specific"],
                             "shared_chance": subspaces[i]["shared"].shape[0] / d,
                             "specific_chance": subspaces[i]["specific"].shape[0] / d})
            inps = outs
            block.to(home)
        del states, inps
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def run_metrics(name: str, layers: list[dict], kept: list[dict]) -> dict[str, float]:
    """Per-run scalars: analysis.{cka,cosine,drift,shared_share,specific_share}.<lang> (means over
    layers) and analysis.lape_kept[_in].<lang|all> (kept share of specific neurons' weights)."""
    out = {}
    for r in layers:
        if r["run"] != name:
            continue
        for key in ("cka", "cosine", "drift", "shared_share", "specific_share"):
            out.setdefault(f"analysis.{key}.{r['lang']}", []).append(r[key])
    out = {k: m for k, v in out.items() if (m := _mean(v)) is not None}
    for r in kept:
        if r["run"] == name:
            for key, col in (("lape_kept", "down_kept"), ("lape_kept_in", "in_kept")):
                if r[col] is not None:
                    out[f"analysis.{key}.{r['lang']}"] = r[col]
    return out


def analyze(model, tokenizer, runs: dict, spec: AnalysisSpec, dense: dict[str, DenseStats] | None = None,
            progress: bool = True) -> dict:
    """Analyse pruned runs of the dense base `model` on each language's held-out text.

    runs: {name: masks.safetensors file or `prune --out` folder}. dense: statistics from
    `dense_statistics` for the same model, spec and languages (computed, or read from the
    cache, when None). Returns plain data (see README, "Analyses inside the pruned model"):
    config, neurons (specific sets and counts), subspace (per layer), layers (per run,
    language and layer), kept (per run and language), runs ({name: {"metrics": {...}}}),
    time_s."""
    source, seqlen = check_spec(model, spec)
    if not isinstance(runs, dict) or not all(isinstance(k, str) and k for k in runs):
        raise UserError("runs", "must map run names to masks files or run folders")
    weights = {name: RunWeights(name, path) for name, path in runs.items()}
    langs = list(spec.languages)
    t0 = time.perf_counter()
    if dense is None:
        dense = dense_statistics(model, tokenizer, spec, progress)
    missing = [l for l in langs if l not in dense]
    if missing:
        raise UserError("languages", f"no dense statistics for {', '.join(missing)}")
    n_blocks = len(find_blocks(model)[1])
    if any(dense[l].means.shape[0] != n_blocks for l in langs):
        raise UserError("dense", "dense statistics belong to a model with another number of blocks")
    t_dense = time.perf_counter() - t0
    ffn_blocks, sets = _neuron_sets(dense, langs, spec)
    subspaces = [language_subspace(torch.stack([dense[l].means[i] for l in langs]), spec.rank) for i in range(n_blocks)]
    home = next(model.parameters()).device
    try:
        layers = _drift_rows(model, tokenizer, source, seqlen, weights, subspaces, spec, progress)
    finally:
        model.to(home)
    kept = _kept_rows(model, weights, sets, langs)
    config = {**dataclasses.asdict(spec), "languages": langs, "seqlen": seqlen}
    return {
        "config": config,
        "neurons": {
            "sets": {l: {i: v.tolist() for i, v in s.items()} for l, s in sets.items()},
            "per_layer": [{"lang": l, "layer": i, "specific": len(sets[l].get(i, [])),
                           "mean_prob": dense[l].probs[i].mean().item()} for l in langs for i in ffn_blocks],
        },
        "subspace": [{"layer": i, "rank": s["specific"].shape[0], "has_shared": s["shared"].shape[0] == 1}
                     for i, s in enumerate(subspaces)],
        "layers": layers,
        "kept": kept,
        "runs": {name: {"metrics": run_metrics(name, layers, kept)} for name in runs},
        "time_s": {"dense": t_dense, "runs": time.perf_counter() - t0 - t_dense},
    }
