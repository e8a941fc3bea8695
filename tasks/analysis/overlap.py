"""Mask overlap: Jaccard similarity of the PRUNED sets of two `masks.safetensors` files,
per block and linear type (Kurz et al.'s "do masks from different calibration
languages overlap").

Works on the bit-packed bytes directly: a keep-bit is 1, so for packed masks a, b of
n weights, |pruned_a ∩ pruned_b| = n - popcount(a | b) and |pruned_a ∪ pruned_b| =
n - popcount(a & b). packbits pads with 0 bits, which are 0 in both a | b and a & b, so
the padding never counts. Only one weight's packed pair is in memory at a time.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
from safetensors import safe_open

from ..errors import UserError

# popcount of every byte value; np.bitwise_count exists only from numpy 2.0
_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_BLOCK = re.compile(r"\.(\d+)\.")


def popcount(packed: np.ndarray) -> int:
    """Number of 1 bits in a uint8 array (summed in chunks so no int64 copy of a big tensor)."""
    total = 0
    for i in range(0, packed.size, 1 << 24):
        total += int(_POP[packed[i:i + (1 << 24)]].sum(dtype=np.int64))
    return total


def split_name(name: str) -> tuple[int, str]:
    """'model.layers.3.self_attn.q_proj.weight' -> (3, 'q_proj'): block index and linear type."""
    m = _BLOCK.search(name)
    kind = name.removesuffix(".weight").rsplit(".", 1)[-1]
    return (int(m.group(1)) if m else -1), kind


def _open(path):
    try:
        f = safe_open(str(path), framework="np")
        shapes = json.loads(f.metadata()["shapes"])
    except FileNotFoundError:
        raise UserError("masks", f"no masks file at {str(path)!r}") from None
    except Exception as e:  # not a safetensors file, or not written by save_masks
        raise UserError("masks", f"{str(path)!r} is not a polyprune masks file ({type(e).__name__})") from None
    return f, shapes


def mask_overlap(path_a, path_b) -> list[dict]:
    """One row per weight: block, linear, n, pruned_a, pruned_b, intersection, union, jaccard.

    Both files must hold the same weights with the same shapes (masks of one base model)."""
    fa, shapes_a = _open(path_a)
    fb, shapes_b = _open(path_b)
    if shapes_a != shapes_b:
        missing = sorted(set(shapes_a) ^ set(shapes_b))
        what = f"weights {missing[:3]} are in only one" if missing else "shapes differ"
        raise UserError("masks", f"{path_a} and {path_b} are masks of different models: {what}")
    rows = []
    for name in shapes_a:  # metadata order = the order the pipeline saved them
        n = int(np.prod(shapes_a[name]))
        a, b = fa.get_tensor(name), fb.get_tensor(name)
        pa, pb = n - popcount(a), n - popcount(b)
        inter, union = n - popcount(a | b), n - popcount(a & b)
        block, kind = split_name(name)
        rows.append({"name": name, "block": block, "linear": kind, "n": n, "pruned_a": pa, "pruned_b": pb,
                     "intersection": inter, "union": union, "jaccard": inter / union if union else 1.0})
        del a, b
    return rows


def jaccard_by(rows: list[dict], key: str | tuple[str, ...]) -> dict:
    """Pool rows by `key` ('block', 'linear', or ('block', 'linear')): Jaccard of the pooled sets."""
    keys = (key,) if isinstance(key, str) else key
    inter, union = defaultdict(int), defaultdict(int)
    for r in rows:
        k = tuple(r[x] for x in keys)
        k = k[0] if len(k) == 1 else k
        inter[k] += r["intersection"]
        union[k] += r["union"]
    return {k: (inter[k] / union[k] if union[k] else 1.0) for k in sorted(inter)}


def jaccard_total(rows: list[dict]) -> float:
    """Jaccard of the whole model's pruned sets."""
    union = sum(r["union"] for r in rows)
    return sum(r["intersection"] for r in rows) / union if union else 1.0
