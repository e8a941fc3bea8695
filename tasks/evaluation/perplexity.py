"""Per-language perplexity on held-out text: non-overlapping `seqlen`-token windows,
ppl = exp(mean token NLL) over every predicted token (as the Wanda evaluation, without its
seqlen-weighting shortcut)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.calibration import eval_windows
from ..data.sources import Source
from ..models import fits_device
from ..pruning.pipeline import blockwise_logits


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8, device=None, blockwise: bool | None = None,
               windows_per_pass: int = 64) -> tuple[float, int]:
    """(sum of token NLLs, number of predicted tokens) over [n, seqlen] windows.

    `device`: where to compute (default: where the model is). `blockwise`: run one decoder block at
    a time on the device, the model staying where it was loaded, as the pruning pipeline does; None
    chooses it when the model does not fit the device. A blockwise pass moves every block to the
    device once per `windows_per_pass` windows, whose activations stay on the device meanwhile.
    """
    explicit = device is not None
    device = torch.device(device) if explicit else next(model.parameters()).device
    if blockwise is None:
        blockwise = not fits_device(model, device)
    if explicit and not blockwise:
        model.to(device)
    total, count = 0.0, 0
    for chunk in windows.split(windows_per_pass if blockwise else len(windows) or 1):
        batches = chunk.split(batch_size)
        if blockwise:
            outputs = blockwise_logits(model, chunk, batch_size, device)
        else:
            outputs = (model(input_ids=b.to(device), use_cache=False).logits for b in batches)
        for batch, logits in zip(batches, outputs):
            batch = batch.to(device)
            logits = logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += batch[:, 1:].numel()
    return total, count


def perplexity(model, tokenizer, source: Source, languages: list[str], seqlen: int,
               nsamples: int | None = None, batch_size: int = 8, split: str = "test", device=None,
               blockwise: bool | None = None, on_language=None) -> dict[str, float]:
    """{lang: perplexity} on the `split` ("valid" or "test") text. `nsamples` caps the windows per
    language (None: all); `device` and `blockwise` as in `window_nll`; `on_language(index, lang, ppl)`
    as each language finishes (an exception it raises propagates: the caller stops early)."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for i, lang in enumerate(languages):
            total, count = window_nll(model, eval_windows(source, tokenizer, lang, seqlen, nsamples, split), batch_size,
                                      device, blockwise)
            out[lang] = math.exp(total / count)
            if on_language is not None:
                on_language(i, lang, out[lang])
    finally:
        model.train(was_training)
    return out
