"""Language-agnostic vs language-specific directions of a layer, from the dense model's
language means (in the style of Xie et al. 2022, "Discovering Low-rank Subspaces for
Language-agnostic Multilingual Representations", EMNLP 2022).

With the mean representation m_l of each of L languages at a layer, Xie et al. write
m_l ~ mu + B g_l: mu, the mean over languages, is what the languages share, and the
orthonormal basis B (d x r) of the top r singular directions of the centred means
m_l - mu is a low-rank subspace holding what tells the languages apart (r <= L - 1).

polyprune takes B as the language-specific subspace and the direction of mu with its
part in B removed as the shared (language-agnostic) direction, so the two are orthogonal
and the share of any change along them, plus the rest, adds up to 1. The chance level of
a share is the dimension it spans over d (1/d and r/d).
"""

from __future__ import annotations

import torch


def language_subspace(means: torch.Tensor, rank: int | None = None, tol: float = 1e-6) -> dict[str, torch.Tensor]:
    """From language means [L, d]: {"shared": [1, d] unit row (or [0, d]), "specific": [r, d]
    orthonormal rows}. rank None keeps every direction the centred means span."""
    means = means.double()
    mu = means.mean(0)
    _, s, vh = torch.linalg.svd(means - mu, full_matrices=False)
    r = int((s > tol * max(s.max().item() if s.numel() else 0.0, 1e-300)).sum())
    r = r if rank is None else min(rank, r)
    basis = vh[:r]
    shared = mu - basis.T @ (basis @ mu)
    norm = shared.norm()
    shared = (shared / norm)[None] if norm > tol * max(mu.norm().item(), 1e-300) else means.new_zeros(0, means.shape[1])
    return {"shared": shared, "specific": basis}
