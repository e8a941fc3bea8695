"""KL divergence of a model's next-token distributions to a reference's (the dense model's), per
window: a fitness for comparing pruned variants of one model on a few windows (EvoPress, Sieberling
et al. 2024, screens candidates with it; how it ranks here: benchmarks/search_fidelity.py).

    ref = reference_log_probs(dense_model, windows[:k])     # float32 [k, seqlen-1, vocab], kept on the CPU
    nll, kl = window_nll_kl(pruned_model, windows, ref)     # float64 [n] and [k]: sums over a window's positions
    mean_kl = kl.sum() / (k * (windows.shape[1] - 1))

The reference takes k * (seqlen - 1) * vocab * 4 bytes: a few windows of a small-vocabulary model
(the demo's 384 tokens: 0.2 MB a window of 128), not a large model's full vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_probs(model, batch: torch.Tensor, device) -> torch.Tensor:
    logits = model(input_ids=batch.to(device), use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def reference_log_probs(model, windows: torch.Tensor, batch_size: int = 8, device=None) -> torch.Tensor:
    """log-probabilities of every next token of [n, seqlen] windows: float32 [n, seqlen-1, vocab], CPU."""
    device = device or next(model.parameters()).device
    return torch.cat([_log_probs(model, b, device).cpu() for b in windows.split(batch_size)]) if len(windows) else torch.zeros(0)


@torch.no_grad()
def window_nll_kl(model, windows: torch.Tensor, reference: torch.Tensor, batch_size: int = 8, device=None):
    """One pass over [n, seqlen] windows: (per window the summed token NLL, float64 [n]; per window of
    the first len(reference) the summed KL(reference || model) over its positions, float64 [len(reference)])."""
    device = device or next(model.parameters()).device
    nll, kl = [], []
    for start in range(0, len(windows), batch_size):
        b = windows[start:start + batch_size].to(device)
        logq = _log_probs(model, b, device)
        nll.append(F.nll_loss(logq.reshape(-1, logq.shape[-1]), b[:, 1:].reshape(-1), reduction="none")
                   .view(len(b), -1).double().sum(1).cpu())
        ref = reference[start:start + len(b)]
        if len(ref):
            div = F.kl_div(logq[:len(ref)], ref.to(device), log_target=True, reduction="none")  # [r, seqlen-1, vocab]
            kl.append(div.sum(-1).double().sum(1).cpu())
    empty = torch.zeros(0, dtype=torch.float64)
    return torch.cat(nll) if nll else empty, torch.cat(kl) if kl else empty
