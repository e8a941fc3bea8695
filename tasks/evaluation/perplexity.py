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
def _losses(model, windows: torch.Tensor, batch_size: int = 8, device=None, blockwise: bool | None = None,
            windows_per_pass: int = 64) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(summed token NLL per window, float64 [n]; predicted tokens per window, int64 [n]; the total NLL
    summed per batch in float32 as it always was, so perplexities stay what they were). Arguments as
    in `window_nll`."""
    explicit = device is not None
    device = torch.device(device) if explicit else next(model.parameters()).device
    if blockwise is None:
        blockwise = not fits_device(model, device)
    if explicit and not blockwise:
        model.to(device)
    nll, tokens, total = [], [], 0.0
    for chunk in windows.split(windows_per_pass if blockwise else len(windows) or 1):
        batches = chunk.split(batch_size)
        if blockwise:
            outputs = blockwise_logits(model, chunk, batch_size, device)
        else:
            outputs = (model(input_ids=b.to(device), use_cache=False).logits for b in batches)
        for batch, logits in zip(batches, outputs):
            batch = batch.to(device)
            # cross_entropy is log_softmax then nll_loss: one log_softmax serves the batch's total (bit for
            # bit the cross_entropy sum it always was) and each window's sum
            logp = F.log_softmax(logits[:, :-1].float().reshape(-1, logits.shape[-1]), dim=-1)
            target = batch[:, 1:].reshape(-1)
            total += F.nll_loss(logp, target, reduction="sum").item()
            nll.append(F.nll_loss(logp, target, reduction="none").view(len(batch), -1).double().sum(1).cpu())
            tokens.append(torch.full((len(batch),), batch.shape[1] - 1, dtype=torch.int64))
    if not nll:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64), total
    return torch.cat(nll), torch.cat(tokens), total


def window_losses(model, windows: torch.Tensor, batch_size: int = 8, device=None, blockwise: bool | None = None,
                  windows_per_pass: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of [n, seqlen] windows: (summed token NLL, float64 [n]; predicted tokens, int64 [n]).
    Arguments as in `window_nll`."""
    return _losses(model, windows, batch_size, device, blockwise, windows_per_pass)[:2]


def window_nll(model, windows: torch.Tensor, batch_size: int = 8, device=None, blockwise: bool | None = None,
               windows_per_pass: int = 64) -> tuple[float, int]:
    """(sum of token NLLs, number of predicted tokens) over [n, seqlen] windows.

    `device`: where to compute (default: where the model is). `blockwise`: run one decoder block at
    a time on the device, the model staying where it was loaded, as the pruning pipeline does; None
    chooses it when the model does not fit the device. A blockwise pass moves every block to the
    device once per `windows_per_pass` windows, whose activations stay on the device meanwhile.
    """
    _, tokens, total = _losses(model, windows, batch_size, device, blockwise, windows_per_pass)
    return total, int(tokens.sum())


def perplexity(model, tokenizer, source: Source, languages: list[str], seqlen: int,
               nsamples: int | None = None, batch_size: int = 8, split: str = "test", device=None,
               blockwise: bool | None = None, on_language=None, losses: bool = False):
    """{lang: perplexity} on the `split` ("valid" or "test") text. `nsamples` caps the windows per
    language (None: all); `device` and `blockwise` as in `window_nll`; `on_language(index, lang, ppl)`
    as each language finishes (an exception it raises propagates: the caller stops early).
    `losses`: return ({lang: ppl}, {lang: (nll per window, tokens per window)}) from the same pass
    (`window_losses`), for intervals that resample the evaluation windows."""
    was_training = model.training
    model.eval()
    out, per_window = {}, {}
    try:
        for i, lang in enumerate(languages):
            nll, tokens, total = _losses(model, eval_windows(source, tokenizer, lang, seqlen, nsamples, split), batch_size,
                                         device, blockwise)
            per_window[lang] = (nll, tokens)
            out[lang] = math.exp(total / int(tokens.sum()))
            if on_language is not None:
                on_language(i, lang, out[lang])
    finally:
        model.train(was_training)
    return (out, per_window) if losses else out
