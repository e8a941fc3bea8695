"""Language-specific FFN neurons (Tang et al. 2024, "Language-Specific Neurons: The Key to
Multilingual Capabilities in Large Language Models", ACL 2024) and how much of them a
pruned model keeps.

A neuron is one input feature of a block's FFN down projection; it is active on a token
when that input is > 0 (M-Wanda's p_lj, docs/mwanda.md). Tang et al. threshold act_fn(gate) > 0 on
LLaMA; the down projection's input exists in every architecture (GELU MLPs have no gate),
and for SwiGLU its sign also depends on the up projection.

LAPE (language activation probability entropy) of neuron j: normalise its per-language
activation probabilities p_lj over languages, q_lj = p_lj / sum_l p_lj, and take the
entropy -sum_l q_lj log q_lj. Low LAPE: active in few languages. Selection, with Tang et
al.'s thresholds as defaults:
1. candidates: neurons whose probability in some language exceeds the `filter_rate`
   quantile (0.95) of all probabilities (rarely active neurons have a meaningless LAPE);
2. the `top_rate` share (1%) of all neurons with the lowest LAPE among the candidates;
3. a selected neuron is specific to every language whose probability exceeds the
   `bar_rate` quantile (0.95) of all probabilities (so it may belong to several).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import DOWN_PROJ, block_linears

TOP_RATE, FILTER_RATE, BAR_RATE = 0.01, 0.95, 0.95


def ffn_linears(block: nn.Module) -> tuple[str, list[str]] | None:
    """(down projection's name, names of the linears that produce its inputs) inside a block.

    The producers (gate/up, fc1, dense_h_to_4h) share the down projection's parent and
    output its input width; None when the block has no recognisable down projection."""
    linears = block_linears(block)
    down = next((n for n in linears if n.rsplit(".", 1)[-1] in DOWN_PROJ), None)
    if down is None:
        return None
    parent = down.rsplit(".", 1)[0] if "." in down else ""
    width = linears[down].in_features
    producers = [n for n, lin in linears.items() if n != down and lin.out_features == width
                 and (n.rsplit(".", 1)[0] if "." in n else "") == parent]
    return down, producers


def lape(probs: torch.Tensor) -> torch.Tensor:
    """LAPE of each neuron from probabilities [n_lang, n_neurons]; NaN where no language fires."""
    probs = probs.double()
    total = probs.sum(0)
    q = probs / total
    ent = -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(0)
    return torch.where(total > 0, ent, torch.full_like(ent, math.nan))


def _quantile(values: torch.Tensor, rate: float) -> float:
    flat = values.flatten().double()
    k = min(max(1, round(flat.numel() * rate)), flat.numel())
    return flat.kthvalue(k).values.item()


def specific_neurons(probs: torch.Tensor, top_rate: float = TOP_RATE, filter_rate: float = FILTER_RATE,
                     bar_rate: float = BAR_RATE) -> list[torch.Tensor]:
    """Per language, the indices (into the neuron axis) of its specific neurons, from [n_lang, n_neurons]."""
    n_lang, n = probs.shape
    ent = lape(probs)
    candidate = (probs > _quantile(probs, filter_rate)).any(0) & ~ent.isnan()
    ent = torch.where(candidate, ent, torch.full_like(ent, math.inf))
    k = min(round(n * top_rate), int(candidate.sum()))
    chosen = ent.topk(k, largest=False).indices if k > 0 else torch.zeros(0, dtype=torch.long)
    bar = _quantile(probs, bar_rate)
    return [chosen[probs[l, chosen] > bar].sort().values for l in range(n_lang)]


def kept_share(keep: torch.Tensor, neurons: torch.Tensor, dim: int) -> tuple[int, int]:
    """(kept weights, all weights) of the given neurons: columns (dim=1) of a down projection's
    keep-mask or rows (dim=0) of a producer's."""
    part = keep.index_select(dim, neurons.to(keep.device))
    return int(part.sum()), part.numel()
