"""Wanda (Sun et al. 2023): score S_ij = |W_ij| * ||X_j||_2, compared within each output row."""

from dataclasses import dataclass

import torch

from .base import METHODS, Method
from .sparsity import select
from .stats import ActStats


def wanda_score(weight, norm_sq):
    """|W| * ||X_j||, in float32 (float64 for float64 weights), broadcast over rows."""
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return weight.detach().abs().to(dt) * norm_sq.sqrt().to(weight.device, dt)


@METHODS.register("wanda")
class Wanda(Method):
    @dataclass
    class Params:
        pass

    def new_stats(self, name, linear, languages):
        return ActStats(linear.weight, languages)

    def prune(self, linear, stats, fraction, nm):
        return select(wanda_score(linear.weight, stats.norm_sq()), fraction, nm)
