"""How good the demo model is and how close two builds of it are: bits per byte on held-out text,
the unigram floor to beat, and the weights of a rebuild against the shipped ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .data import builtin


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seqlen: int = 128, batch: int = 32) -> float:
    """Mean bits per predicted byte over non-overlapping windows of `seqlen` tokens of each text."""
    windows = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        windows += [ids[i : i + seqlen] for i in range(0, len(ids) - 1, seqlen) if len(ids[i : i + seqlen]) > 1]
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # pad 0 is masked out below
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for r, w in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = True
        logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
        targets, keep = ids[:, 1:], mask[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        nll += losses[keep].sum().item()
        count += keep.sum().item()
    return nll / count / math.log(2)


def unigram_bits_per_byte(train_texts: list[str], eval_texts: list[str], alpha: float = 1.0) -> float:
    """Bits per byte of eval text under add-`alpha` byte frequencies of the training text: the floor to beat."""
    def as_bytes(texts):
        return torch.tensor(list("".join(texts).encode()), dtype=torch.long)

    counts = torch.bincount(as_bytes(train_texts), minlength=256).double()
    logp = torch.log2((counts + alpha) / (counts.sum() + 256 * alpha))
    return -logp[as_bytes(eval_texts)].mean().item()


def target_quality(model, tokenizer) -> dict[str, float]:
    """Bits per byte of every target language's valid split (text training never saw)."""
    return {l: round(bits_per_byte(model, tokenizer, builtin.documents(l, "valid")), 5) for l in builtin.TARGETS}


def compare_weights(a: Path, b: Path) -> dict:
    """Two shipped builds (folders with model.safetensors + training.json): the largest weight
    difference, the share of weights that differ (in bfloat16 steps), and the quality difference."""
    from safetensors.torch import load_file

    if not (b / "model.safetensors").is_file():
        return {"shipped": "none"}
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if x.keys() != y.keys():
        return {"same_tensors": False}
    diffs = [(x[k].float() - y[k].float()).abs() for k in x]
    n = sum(d.numel() for d in diffs)
    qa, qb = (json.loads((f / "training.json").read_text()).get("quality", {}) for f in (a, b))
    return {"identical": all(torch.equal(x[k], y[k]) for k in x), "max_abs_diff": max(d.max().item() for d in diffs),
            "share_differing": sum((d > 0).sum().item() for d in diffs) / n,
            "max_bpb_diff": max((abs(qa[l] - qb[l]) for l in qa if l in qb), default=math.nan)}
