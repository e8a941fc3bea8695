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
import math
import time

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import block_linears, find_blocks
from ..pruning.pipeline import capture
from .dense import AnalysisSpec, DenseStats, block_output, check_spec, dense_statistics, text_windows  # noqa: F401 (API)
from .drift import DriftStats
from .neurons import ffn_linears, kept_share, specific_neurons
from .runs import RunWeights
from .subspace import language_subspace


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
            outs = [block_output(block(inps[b], *args, **kw)) for b, (args, kw) in enumerate(calls[i])]
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
                        states[name][b] = block_output(block(states[name][b], *args, **kw))
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
    cache, when None). Returns plain data (docs/analyses.md):
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
