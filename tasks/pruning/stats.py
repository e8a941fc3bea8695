"""Calibration statistics accumulated by forward hooks, one object per linear.

Accumulators use float64 for float64 weights and float32 otherwise; `add` takes
a batch of the linear's inputs ([B, L, C] or [B*L, C]) and each sample's language.
`languages` is the calibration languages' mix weights, float64 [n_lang] summing to 1
(`language_weights`): methods that weight per-language statistics read them.
"""

from __future__ import annotations

import torch


def _stat_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def language_weights(n_lang: int, weights=None) -> torch.Tensor:
    """The calibration languages' weights as float64 [n_lang] summing to 1; None: equal weights."""
    if weights is None:
        return torch.full((n_lang,), 1 / n_lang, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != n_lang or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"language weights must be {n_lang} finite numbers >= 0 with a positive sum, got {weights!r}")
    return w / w.sum()


class ActStats:
    """Per-language sums of x_j^2, token counts and (optionally) counts of x_j > 0, and the languages' weights."""

    def __init__(self, weight: torch.Tensor, languages: torch.Tensor, positive: bool = False):
        cols, dev, dt = weight.shape[1], weight.device, _stat_dtype(weight)
        n_lang = len(languages)
        self.weights = languages.to(dev, torch.float64)
        # float64 sums: one language may hold millions of tokens
        self.sumsq = torch.zeros(n_lang, cols, dtype=torch.float64, device=dev)
        self.tokens = torch.zeros(n_lang, dtype=torch.float64, device=dev)
        self.pos = torch.zeros(n_lang, cols, dtype=torch.float64, device=dev) if positive else None
        self._dt = dt

    def add(self, x: torch.Tensor, lang: torch.Tensor) -> None:
        x = x.reshape(lang.numel(), -1, x.shape[-1]).to(self._dt)  # [B, L, C]
        self.sumsq.index_add_(0, lang, (x * x).sum(1).double())
        self.tokens.index_add_(0, lang, torch.full((lang.numel(),), float(x.shape[1]), dtype=torch.float64, device=x.device))
        if self.pos is not None:
            self.pos.index_add_(0, lang, (x > 0).sum(1).double())

    def norm_sq(self) -> torch.Tensor:
        """||X_j||_2^2 over all calibration tokens (Wanda's statistic)."""
        return self.sumsq.sum(0)

    def rms(self) -> torch.Tensor:
        """a_lj = sqrt(mean over language-l tokens of x_j^2): [n_lang, C]."""
        return (self.sumsq / self.tokens.clamp_min(1)[:, None]).sqrt()

    def fire_rate(self) -> torch.Tensor:
        """p_lj = share of language-l tokens with x_j > 0: [n_lang, C]."""
        return self.pos / self.tokens.clamp_min(1)[:, None]


class Hessian:
    """H = (2/N) sum x x^T over N calibration samples, kept as a running mean as in SparseGPT."""

    def __init__(self, weight: torch.Tensor):
        cols = weight.shape[1]
        self.H = torch.zeros(cols, cols, dtype=_stat_dtype(weight), device=weight.device)
        self.nsamples = 0

    def add(self, x: torch.Tensor, lang: torch.Tensor) -> None:
        batch = lang.numel()
        x = x.reshape(-1, x.shape[-1]).to(self.H.dtype)
        self.H *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        x = (2 / self.nsamples) ** 0.5 * x
        self.H += x.t() @ x
