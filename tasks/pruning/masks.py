"""Keep-masks on disk: `masks.safetensors`, one bit-packed uint8 tensor per pruned weight,
named by the weight's state-dict name; shapes in the metadata. With the base model
they rebuild a Wanda / magnitude / M-Wanda model exactly (SparseGPT also updates the
kept weights, so its pruned model is the saved one)."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..models import prunable_weights


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.flatten().numpy().astype(np.uint8)))


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool)).view(*shape)


FORMAT = "polyprune-keep-mask-v1"
EXPECTED = "expected a masks.safetensors written by `polyprune prune`"


def save_masks(path, masks: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    shapes = {k: list(v.shape) for k, v in masks.items()}
    meta = {"format": FORMAT, "shapes": json.dumps(shapes), **(metadata or {})}
    save_file({k: pack(v.cpu()) for k, v in masks.items()}, str(path), metadata=meta)


def read_shapes(path) -> dict[str, list[int]]:
    """{weight name: shape} of a masks file, checked against its header without reading the masks.

    A missing, truncated or foreign file (calibration.safetensors, model weights) is one UserError
    naming the file and what was expected.
    """
    where = repr(str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UserError("masks", f"{where} is not a polyprune masks file (format {meta.get('format')!r}); {EXPECTED}")
            shapes = json.loads(meta["shapes"])
            for name in f.keys():
                packed = f.get_slice(name).get_shape()
                if name not in shapes or packed != [(int(np.prod(shapes[name])) + 7) // 8]:
                    raise ValueError(f"tensor {name!r} does not match its recorded shape")
            if set(shapes) != set(f.keys()):
                raise ValueError("the recorded shapes name other tensors than the file holds")
    except FileNotFoundError:
        raise UserError("masks", f"no masks file at {where}") from None
    except UserError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError("masks", f"{where} is corrupt or truncated ({str(e).splitlines()[0]}); {EXPECTED}") from None
    return shapes


def iter_masks(path):
    """Yield (weight name, keep-mask) one at a time, so whole models never sit unpacked in memory."""
    shapes = read_shapes(path)
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            yield name, unpack(f.get_tensor(name), shapes[name])


def load_masks(path) -> dict[str, torch.Tensor]:
    return dict(iter_masks(path))


@torch.no_grad()
def apply_masks(model, path) -> int:
    """Zero the pruned weights of `model` (the base model) in place; returns how many weights were masked.

    Every name and shape is checked before any weight changes, so masks of another model leave it intact.
    """
    weights = prunable_weights(model)
    for name, shape in read_shapes(path).items():
        if name not in weights or tuple(weights[name].weight.shape) != tuple(shape):
            raise UserError("masks", f"{str(path)!r} does not fit this model: mask {name!r} has no weight of "
                                     f"shape {tuple(shape)} here (masks of another model?)")
    count = 0
    for name, keep in iter_masks(path):
        weights[name].weight.mul_(keep.to(weights[name].weight.device, weights[name].weight.dtype))
        count += 1
    return count
