"""The calibration protocol (Wanda / SparseGPT C4 protocol, per language) and
held-out evaluation windows, with tokenised sets cached on disk.

Per language: with a seeded generator pick a random document with more than
`seqlen` tokens and a random window of `seqlen` tokens in it; repeat. A mixture
draws each language's windows (counts from `langs.allocate`: proportional to the
weights with a floor of one, or equal) the same way, each with its own generator
seeded by (seed, language), so "en" and "en=0.5,de=0.5" share their first
English samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .builtin import cache_root
from .langs import allocate
from .sources import Source

HELD_OUT = ("valid", "test")  # the splits evaluation may read; "test" is what results quote


def tokenizer_fingerprint(tokenizer) -> str:
    probe = "Hello, wörld! 你好 ١٢٣ Привет"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    return json.dumps([type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer), ids])


def fingerprint(key: dict) -> str:
    """The digest of everything that determines a tokenised set: it keys the cache and names the
    data in records (MLflow dataset digests), so equal digests mean equal token ids."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _cached(kind: str, key: dict, build):
    """Load tensors from the cache keyed by `key`, or build and store them (atomically)."""
    digest = fingerprint(key)
    path = cache_root() / "tokens" / f"{kind}-{digest}.safetensors"
    if path.exists():
        return load_file(path)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, tmp)
    os.replace(tmp, path)
    return tensors


@dataclass
class Calibration:
    input_ids: torch.Tensor  # int64 [nsamples, seqlen]
    language: torch.Tensor  # int64 [nsamples], index into `languages`
    languages: list[str]
    weights: list[float]  # the mix's weights of `languages`, normalised over them (what weights M-Wanda's statistics)
    fingerprint: str = ""  # of the sampling key: source text, tokenizer, counts, seqlen, seed


def _tokenize(tokenizer, docs: list[str]) -> list[list[int]]:
    return tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []


def calibration_docs(source: Source, tokenizer, lang: str, nsamples: int, seqlen: int) -> list[list[int]]:
    """The tokenised calibration documents of `lang` longer than `seqlen`, checked to hold
    `nsamples` windows (a driver calls this to validate before any work)."""
    docs = [d for d in _tokenize(tokenizer, source.documents(lang, "calib")) if len(d) > seqlen]
    if not docs:
        raise UserError("seqlen", f"no calibration document of {lang!r} in {source.name!r} is longer than seqlen={seqlen} tokens")
    available = sum(len(d) for d in docs)
    if available < nsamples * seqlen:
        raise UserError(
            "nsamples",
            f"{nsamples} samples of {seqlen} tokens need {nsamples * seqlen} tokens of {lang!r}, "
            f"but {source.name!r} holds {available} in documents longer than seqlen",
        )
    return docs


def sample_calibration(source: Source, tokenizer, mix: dict[str, float], nsamples: int, seqlen: int, seed: int,
                       allocation: str = "proportional") -> Calibration:
    # the key holds the counts, so two allocations share a cached set only where they draw the same windows
    counts = allocate(mix, nsamples, allocation)
    languages = sorted(l for l in mix if counts[l] > 0)
    for lang in languages:
        source.check_language(lang, "calib")
    key = {"source": source.fingerprint, "tok": tokenizer_fingerprint(tokenizer), "counts": counts, "seqlen": seqlen, "seed": seed}

    def build():
        ids, lang_idx = [], []
        for li, lang in enumerate(languages):
            docs = calibration_docs(source, tokenizer, lang, counts[lang], seqlen)
            rng = random.Random(f"{seed}/{lang}")
            for _ in range(counts[lang]):
                doc = docs[rng.randrange(len(docs))]
                start = rng.randint(0, len(doc) - seqlen - 1)
                ids.append(doc[start:start + seqlen])
                lang_idx.append(li)
        return {"input_ids": torch.tensor(ids, dtype=torch.int64), "language": torch.tensor(lang_idx, dtype=torch.int64)}

    t = _cached("calib", key, build)
    total = sum(mix[l] for l in languages)
    return Calibration(t["input_ids"], t["language"], languages, [mix[l] / total for l in languages], fingerprint(key))


def eval_key(source: Source, tokenizer, lang: str, seqlen: int, split: str) -> dict:
    """What determines a language's evaluation windows (before `nsamples` takes the first ones)."""
    return {"source": source.fingerprint, "tok": tokenizer_fingerprint(tokenizer), "lang": lang, "seqlen": seqlen, "split": split}


def eval_windows(source: Source, tokenizer, lang: str, seqlen: int, nsamples: int | None = None,
                 split: str = "test") -> torch.Tensor:
    """Non-overlapping `seqlen`-token windows of the language's held-out text ("valid" or "test"): int64 [n, seqlen]."""
    if split not in HELD_OUT:
        raise UserError("split", f"evaluation reads held-out text; allowed: {', '.join(HELD_OUT)}, got {split!r}")
    source.check_language(lang, "ppl")
    key = eval_key(source, tokenizer, lang, seqlen, split)

    def build():
        ids = _tokenize(tokenizer, ["\n\n".join(source.documents(lang, split))])[0]
        n = len(ids) // seqlen
        if n == 0:
            raise UserError("ppl", f"{split} text of {lang!r} in {source.name!r} has {len(ids)} tokens, fewer than seqlen={seqlen}")
        return {"input_ids": torch.tensor(ids[: n * seqlen], dtype=torch.int64).view(n, seqlen)}

    windows = _cached("eval", key, build)["input_ids"]
    return windows if nsamples is None else windows[:nsamples]
