"""Sparsity specs and the mask selections every method shares. Masks are keep-masks (True = kept)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Sparsity:
    fraction: float  # share of zeros; n/m for N:M
    n: int = 0
    m: int = 0

    @property
    def nm(self) -> tuple[int, int] | None:
        return (self.n, self.m) if self.m else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else f"{self.fraction:g}"


def parse_sparsity(value, field: str = "sparsity") -> Sparsity:
    text = str(value).strip()
    nm = re.fullmatch(r"(\d+):(\d+)", text)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if m < 2 or not 0 < n < m:
            raise UserError(field, f"N:M needs 0 < N < M (e.g. 2:4, 4:8), got {text!r}")
        return Sparsity(n / m, n, m)
    try:
        s = float(text)
    except ValueError:
        raise UserError(field, f"must be a fraction in [0, 1) or N:M like 2:4, got {text!r}") from None
    if not math.isfinite(s) or not 0 <= s < 1:
        raise UserError(field, f"must be a fraction in [0, 1) or N:M like 2:4, got {text!r}")
    return Sparsity(s)


def row_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the floor(C_in * fraction) lowest scores of every output row (Wanda's comparison group)."""
    k = int(score.shape[1] * fraction)
    if not k:
        return torch.ones_like(score, dtype=torch.bool)
    # The first k of a stable sort, without sorting (about 2x faster): everything below the k-th
    # smallest score, then the leftmost of the scores tied with it.
    kth = score.kthvalue(k, dim=1, keepdim=True).values
    below = score < kth
    tied = score == kth
    return ~(below | (tied & (tied.cumsum(1) <= k - below.sum(1, keepdim=True))))


def matrix_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the floor(numel * fraction) lowest scores of the whole matrix."""
    k = int(score.numel() * fraction)
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if k:
        keep[torch.sort(score.flatten(), stable=True)[1][:k]] = False
    return keep.view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of m consecutive input columns of a row, zero the n lowest scores."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2, largest=False)[1], False)
    return keep.view(rows, cols)


def select(score: torch.Tensor, fraction: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Per-row selection: N:M when given, else the row quantile."""
    return nm_mask(score, *nm) if nm else row_mask(score, fraction)
