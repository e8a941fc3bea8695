"""Per-language perplexity on held-out text: non-overlapping `seqlen`-token windows,
ppl = exp(mean token NLL) over every predicted token (as the Wanda evaluation, without its
seqlen-weighting shortcut)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.calibration import eval_windows
from ..data.sources import Source


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8) -> tuple[float, int]:
    """(sum of token NLLs, number of predicted tokens) over [n, seqlen] windows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += batch[:, 1:].numel()
    return total, count


def perplexity(model, tokenizer, source: Source, languages: list[str], seqlen: int,
               nsamples: int | None = None, batch_size: int = 8, split: str = "test") -> dict[str, float]:
    """{lang: perplexity} on the `split` ("valid" or "test") text. `nsamples` caps the windows per language (None: all)."""
    was_training = model.training
    model.eval()
    out = {}
    for lang in languages:
        total, count = window_nll(model, eval_windows(source, tokenizer, lang, seqlen, nsamples, split), batch_size)
        out[lang] = math.exp(total / count)
    model.train(was_training)
    return out
