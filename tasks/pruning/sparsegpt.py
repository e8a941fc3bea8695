"""SparseGPT (Frantar & Alistarh 2023): OBS-based mask selection with weight reconstruction,
following the reference `fasterprune` column by column with lazy block updates."""

from dataclasses import dataclass

import torch

from .base import METHODS, Method
from .stats import Hessian


@METHODS.register("sparsegpt")
class SparseGPT(Method):
    updates_weights = True  # the OBS update changes the kept weights

    @dataclass
    class Params:
        blocksize: int = 128
        percdamp: float = 0.01
        true_sequential: bool = False  # prune q/k/v, then o, then up/gate, then down, re-collecting H in between

    def new_stats(self, name, linear, languages):
        return Hessian(linear.weight)

    @torch.no_grad()
    def prune(self, linear, stats, fraction, nm):
        W = linear.weight.detach().clone().to(stats.H.dtype)
        keep = sparsegpt_prune(W, stats.H.clone(), fraction, nm, self.params.blocksize, self.params.percdamp)
        linear.weight.copy_(W.to(linear.weight.dtype))
        return keep


def sparsegpt_prune(W, H, fraction, nm, blocksize=128, percdamp=0.01):
    """Prune W [rows, cols] in place given H [cols, cols]; return the keep-mask."""
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    # Upper Cholesky factor of H^-1: row i holds what OBS needs to update columns >= i.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    prune_mask = torch.zeros_like(W, dtype=torch.bool)
    n, m = nm or (0, 0)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            tmp = W1**2 / d.reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * fraction)]
            mask1 = tmp <= thresh if fraction > 0 else torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm and i % m == 0:
                tmp = W1[:, i:i + m] ** 2 / d[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, n, dim=1, largest=False)[1], True)
            w = W1[:, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        prune_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return ~prune_mask
