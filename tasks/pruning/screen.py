"""Screening at low fidelity: masks for every block at once from the DENSE model's statistics.

The exact pipeline (`pipeline.prune_blocks`) calibrates block i on the outputs of blocks 0..i-1
already pruned. A screen takes the dense model's statistics instead, which one pass per
calibration language computes once (`dense_window_stats`) and keeps per calibration window: the
calibration protocol draws a language's windows with a generator seeded by (seed, language), so a
language's first n windows are the same in every mix, and any mix's statistics are sums of each
language's first n_l windows (`fill_stats`). Block 0 sees the same inputs in both: there the
statistics, hence the masks, are the exact pipeline's. Methods whose statistic is not such a sum
(SparseGPT's Hessian) are not served (`check_served`).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import DOWN_PROJ, block_linears, find_blocks
from .pipeline import apply_keep, block_report, capture, collect, propagate
from .schedules import Schedule, check_targets
from .stats import ActStats, language_weights, stat_dtype, window_sums

# fill(block index, linear name, an empty ActStats of that linear) -> the same ActStats, filled
Fill = Callable[[int, str, ActStats], ActStats]


def positive_counts(name: str) -> bool:
    """Which linears' inputs the cache also counts x_j > 0 for (M-Wanda's activation probability)."""
    return name.rsplit(".", 1)[-1] in DOWN_PROJ


class WindowStats:
    """One linear's `window_sums`, kept per calibration window on the CPU (int32 counts: at most seqlen)."""

    def __init__(self, weight: torch.Tensor, positive: bool):
        self.dt, self.sumsq, self.pos = stat_dtype(weight), [], [] if positive else None

    def add(self, x: torch.Tensor, lang: torch.Tensor) -> None:
        sq, pos, _ = window_sums(x, lang.numel(), self.dt, self.pos is not None)
        self.sumsq.append(sq.cpu())
        if pos is not None:
            self.pos.append(pos.to(torch.int32).cpu())


@torch.no_grad()
def dense_window_stats(model, input_ids: torch.Tensor, batch_size: int, device, progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-window statistics of every linear of the DENSE model over `input_ids` [n, seqlen]:
    {"<block>.<linear>.sumsq": [n, C]} and, for FFN down-projections, {"<block>.<linear>.pos": [n, C]}.
    The blocks run one by one as in the pipeline, each on the previous dense block's outputs."""
    _, blocks = find_blocks(model)
    inps, calls = capture(model, input_ids, batch_size, device)
    lang_batches = [torch.zeros(len(b), dtype=torch.int64, device=device) for b in input_ids.split(batch_size)]
    out = {}
    for i, block in enumerate(tqdm(blocks, desc="dense statistics", disable=not progress, leave=False)):
        home = next(block.parameters()).device
        block.to(device)
        stats = collect(block, block_linears(block), lambda n, lin: WindowStats(lin.weight, positive_counts(n)), inps, calls[i],
                        lang_batches)
        for name, s in stats.items():
            out[f"{i}.{name}.sumsq"] = torch.cat(s.sumsq)
            if s.pos is not None:
                out[f"{i}.{name}.pos"] = torch.cat(s.pos)
        if i + 1 < len(blocks):
            propagate(block, inps, calls[i])
        block.to(home)
    return out


def fill_stats(stats: ActStats, windows: list[dict[str, torch.Tensor]], counts: list[int], tokens: int, key: str) -> ActStats:
    """`stats` (an empty ActStats, one row per language) with language l's sums over its first
    counts[l] windows of `windows[l]` for linear `key` ("<block>.<linear>"), added one window at a time
    in float64 in window order, as `ActStats.add` accumulates them in a calibration pass."""
    for l, (w, n) in enumerate(zip(windows, counts)):
        stats.sumsq[l] = _sequential_sum(w[f"{key}.sumsq"], n).to(stats.sumsq.device)
        stats.tokens[l] = float(n * tokens)
        if stats.pos is not None:
            if f"{key}.pos" not in w:
                raise UserError("method", f"the cache holds no activation counts for {key} (only for {', '.join(DOWN_PROJ)} inputs)")
            stats.pos[l] = _sequential_sum(w[f"{key}.pos"], n).to(stats.pos.device)
    return stats


def _sequential_sum(rows: torch.Tensor, n: int) -> torch.Tensor:
    if n > len(rows):
        raise UserError("nsamples", f"the cache holds {len(rows)} windows of a language, the mix needs {n}")
    # cumsum adds row after row, the order of index_add_ in ActStats.add: the same float64 sums, bit for bit
    return rows[:n].double().cumsum(0)[-1] if n else torch.zeros(rows.shape[1], dtype=torch.float64)


def check_served(method, name: str) -> None:
    """Refuse a method whose statistic is not an ActStats (a sum over calibration tokens)."""
    if method.needs_calibration and not isinstance(method.new_stats("probe", nn.Linear(1, 1), language_weights(1)), ActStats):
        raise UserError("method", f"{name} is not served from cached statistics (its statistic is not a per-language sum over "
                                  f"calibration tokens): prune it at full fidelity")


@torch.no_grad()
def screen_targets(model, schedule: Schedule, target: float, fill: Fill, n_lang: int, device) -> list[float]:
    """Per-block sparsities as `pipeline.schedule_targets` gives them, from filled statistics (that
    pass is already a dense one: the schedules' statistics are exactly the cache's)."""
    _, blocks = find_blocks(model)
    if not schedule.needs_stats:
        return check_targets(schedule.allocate([], target, len(blocks)))
    scores = []
    for i, block in enumerate(blocks):
        home = next(block.parameters()).device
        block.to(device)
        linears = block_linears(block)
        scores.append(schedule.block_score(linears, {n: fill(i, n, ActStats(lin.weight, language_weights(n_lang)))
                                                     for n, lin in linears.items()}))
        block.to(home)
    return check_targets(schedule.allocate(scores, target, len(blocks)))


@torch.no_grad()
def screen_blocks(model, method, targets: list[float], nm, fill: Fill, languages: torch.Tensor, device, progress=False):
    """Prune every block in place from filled statistics, no calibration pass and no propagation.
    Returns ({weight name: keep-mask (cpu)}, per-block report) as `pipeline.prune_blocks` does."""
    prefix, blocks = find_blocks(model)
    masks, report = {}, []
    for i, block in enumerate(tqdm(blocks, desc=f"screening ({type(method).__name__})", disable=not progress)):
        t0 = time.perf_counter()
        home = next(block.parameters()).device
        block.to(device)
        linears = block_linears(block)
        layer_sparsity = {}
        for name, lin in linears.items():
            stats = fill(i, name, method.new_stats(name, lin, languages)) if method.needs_calibration else None
            keep = method.prune(lin, stats, targets[i], nm)
            masks[f"{prefix}.{i}.{name}.weight"], layer_sparsity[name] = keep.cpu(), apply_keep(lin, keep)
        block.to(home)
        report.append(block_report(i, targets[i], linears, layer_sparsity, t0))
    return masks, report
