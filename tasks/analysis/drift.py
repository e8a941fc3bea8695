"""Representation drift between the dense and a pruned model on the same tokens.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
Revisited"): with token representations X (dense) and Y (pruned), [n, d] each, columns
centred, CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F); 1 when Y is X up to rotation
and isotropic scaling. Mean cosine: the average over tokens of cos(x_t, y_t).

Both are streamed over batches in float64 through d x d sums, so the tokens never need
to sit in memory together. A few huge hidden dimensions ("massive activations") weigh
heavily in linear CKA; the figures are reported as measured.
"""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two [n, d] (or [n, d1], [n, d2]) token matrices in memory."""
    acc = DriftStats()
    acc.add(x, y)
    return acc.cka()


class DriftStats:
    """Running sums for CKA, cosine and the energy of y - x along given directions."""

    def __init__(self, directions: dict[str, torch.Tensor] | None = None, dense: tuple | None = None):
        # directions: name -> [k, d] orthonormal rows; energy share of y - x in their span.
        # dense: (sum of x, x^T x) over all tokens, float64, when the caller shares them between
        # several pruned models of the same dense tokens (add() then skips the d x d product).
        self.directions = directions or {}
        self.n = 0
        self.shared_dense = dense is not None
        self.sx, self.sxx = dense if dense is not None else (None, None)
        self.sy = self.syy = self.syx = None
        self.cos = 0.0
        self.x_energy = self.delta_energy = 0.0
        self.along = dict.fromkeys(self.directions, 0.0)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the same tokens' representations x (dense) and y (pruned), [..., d] each."""
        x = x.reshape(-1, x.shape[-1]).double()
        y = y.reshape(-1, y.shape[-1]).double()
        if self.sy is None:
            if not self.shared_dense:
                self.sx, self.sxx = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1], x.shape[1])
            self.sy, self.syy = y.new_zeros(y.shape[1]), y.new_zeros(y.shape[1], y.shape[1])
            self.syx = y.new_zeros(y.shape[1], x.shape[1])
        self.n += x.shape[0]
        if not self.shared_dense:
            self.sx += x.sum(0)
            self.sxx += x.T @ x
        self.sy += y.sum(0)
        self.syy += y.T @ y
        self.syx += y.T @ x
        self.cos += torch.nn.functional.cosine_similarity(x, y, dim=1).sum().item()
        self.x_energy += x.square().sum().item()
        if x.shape == y.shape:
            delta = y - x
            self.delta_energy += delta.square().sum().item()
            for name, basis in self.directions.items():
                self.along[name] += (delta @ basis.to(delta).T).square().sum().item()

    def cka(self) -> float:
        n = self.n
        cxx = self.sxx - torch.outer(self.sx, self.sx) / n
        cyy = self.syy - torch.outer(self.sy, self.sy) / n
        cyx = self.syx - torch.outer(self.sy, self.sx) / n
        den = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        if den == 0:
            return float("nan")
        return (torch.linalg.matrix_norm(cyx).square() / den).clamp(max=1.0).item()

    def summary(self) -> dict[str, float]:
        """cka, cosine, relative drift (||y - x|| / ||x|| over all tokens) and the share of the
        drift's energy along each direction set (`share_<name>`; NaN when there is no drift)."""
        out = {"cka": self.cka(), "cosine": self.cos / self.n,
               "drift": (self.delta_energy / self.x_energy) ** 0.5 if self.x_energy else float("nan")}
        for name, e in self.along.items():
            out[f"share_{name}"] = e / self.delta_energy if self.delta_energy > 0 else float("nan")
        return out
