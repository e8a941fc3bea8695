"""RIA, relative importance and activations (Zhang et al., ICLR 2024, "Plug-and-Play"):

    RI_ij = |W_ij| / sum_k |W_kj|  +  |W_ij| / sum_k |W_ik|     (W_ij against its input column and its output row)
    S_ij  = RI_ij * ||X_j||_2 ** a                              a = 0.5 as in the paper

Compared over the whole matrix (`scope=matrix`, the paper's default) or per output row
(`scope=row`); N:M per group of M inputs of a row. The paper's threshold `S <= S_(k)` drops
one weight more than the floor(numel * s) that every polyprune method drops; its N:M
channel permutation (a reordering search on top of the mask) is not implemented.
"""

from dataclasses import dataclass, field

import torch

from .base import METHODS, Method
from .sparsity import matrix_mask, nm_mask, row_mask
from .stats import ActStats


def relative_importance(weight: torch.Tensor) -> torch.Tensor:
    """RI_ij in float32 (float64 for float64 weights); an all-zero row or column contributes 0, not NaN."""
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().abs().to(dt)
    return w / w.sum(0, keepdim=True).clamp_min(torch.finfo(dt).tiny) + w / w.sum(1, keepdim=True).clamp_min(torch.finfo(dt).tiny)


def ria_select(score: torch.Tensor, fraction: float, nm, scope: str) -> torch.Tensor:
    if nm:
        return nm_mask(score, *nm)
    return (matrix_mask if scope == "matrix" else row_mask)(score, fraction)


@METHODS.register("ria")
class RIA(Method):
    @dataclass
    class Params:
        a: float = 0.5  # exponent of the activation norm
        scope: str = field(default="matrix", metadata={"choices": ("matrix", "row")})

    def new_stats(self, name, linear, languages):
        return ActStats(linear.weight, languages)

    def prune(self, linear, stats, fraction, nm):
        ri = relative_importance(linear.weight)
        score = ri * stats.norm_sq().sqrt().to(ri.device, ri.dtype) ** self.params.a
        return ria_select(score, fraction, nm, self.params.scope)
