"""The screening cache's files: one calibration language's per-window dense statistics
(`screen.dense_window_stats`) in one safetensors file beside the token caches,

    <cache root>/stats/<model digest>-<language>-<key digest>.safetensors

keyed by the model's weights digest and the language's calibration set (source text, tokenizer,
language, seed, nsamples, seqlen) and the device type that computed it. A file is written under a
temporary name and renamed, so a killed build never leaves one that looks complete. A file is
trusted only when it loads, its key is the one asked for, its checksum (sha256 of every tensor)
matches and its tensors have the model's shapes; anything else is reported and rebuilt.

Linears that read the same tensor (q, k and v; gate and up) have equal statistics: the file stores
them once and names the others as aliases.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = 1  # raise when the file layout or what a window's sums mean changes


class StaleCache(Exception):
    """A cache file that must not be trusted (the message says why); the caller rebuilds it."""


def cache_path(root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / "stats" / f"{key['model'][:16]}-{key['lang']}-{digest}.safetensors"


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the distinct tensors, {alias: stored name}): equal tensors of one block are stored once."""
    stored, alias = {}, {}
    for name, t in tensors.items():
        block = name.split(".", 1)[0]
        same = next((n for n, s in stored.items() if n.split(".", 1)[0] == block and n.rsplit(".", 1)[1] == name.rsplit(".", 1)[1]
                     and s.shape == t.shape and s.dtype == t.dtype and torch.equal(s, t)), None)
        if same is None:
            stored[name] = t.contiguous()
        else:
            alias[name] = same
    return stored, alias


def save(path: Path, tensors: dict[str, torch.Tensor], key: dict) -> int:
    """Write atomically; returns the file's size in bytes."""
    stored, alias = _dedupe(tensors)
    meta = {"key": json.dumps(key, sort_keys=True), "alias": json.dumps(alias, sort_keys=True), "sha256": checksum(stored)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        save_file(stored, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def load(path: Path, key: dict, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """The file's tensors (aliases resolved), or StaleCache saying why it cannot be trusted.
    `shapes`: {name: (shape, dtype)} every tensor the model needs, exactly."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        stored = load_file(str(path))
        alias = json.loads(meta["alias"])
        stored_key = json.loads(meta["key"])
        sha = meta["sha256"]
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, OverflowError, MemoryError) as e:
        raise StaleCache(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if stored_key != key:
        raise StaleCache("its key differs from the one asked for")
    if checksum(stored) != sha:
        raise StaleCache("checksum mismatch (the file changed after it was written)")
    try:
        tensors = {**stored, **{a: stored[s] for a, s in alias.items()}}
    except KeyError as e:
        raise StaleCache(f"alias to a missing tensor {e}") from None
    if set(tensors) != set(shapes):
        raise StaleCache(f"holds other tensors than the model needs ({len(tensors)} vs {len(shapes)})")
    bad = [n for n, (shape, dtype) in shapes.items() if tuple(tensors[n].shape) != shape or tensors[n].dtype != dtype]
    if bad:
        raise StaleCache(f"{bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model needs {shapes[bad[0]][0]}")
    return tensors
