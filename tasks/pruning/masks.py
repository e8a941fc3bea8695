"""Keep-masks on disk: `masks.safetensors`, one bit-packed uint8 tensor per pruned weight,
named by the weight's state-dict name; shapes in the metadata. With the base model
they rebuild a Wanda / magnitude / M-Wanda model exactly (SparseGPT also updates the
kept weights, so its pruned model is the saved one)."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..models import prunable_weights


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.flatten().numpy().astype(np.uint8)))


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool)).view(*shape)


def save_masks(path, masks: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    shapes = {k: list(v.shape) for k, v in masks.items()}
    meta = {"format": "polyprune-keep-mask-v1", "shapes": json.dumps(shapes), **(metadata or {})}
    save_file({k: pack(v.cpu()) for k, v in masks.items()}, str(path), metadata=meta)


def iter_masks(path):
    """Yield (weight name, keep-mask) one at a time, so whole models never sit unpacked in memory."""
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        for name in f.keys():
            yield name, unpack(f.get_tensor(name), shapes[name])


def load_masks(path) -> dict[str, torch.Tensor]:
    return dict(iter_masks(path))


@torch.no_grad()
def apply_masks(model, path) -> int:
    """Zero the pruned weights of `model` (the base model) in place; returns how many weights were masked."""
    weights = prunable_weights(model)
    count = 0
    for name, keep in iter_masks(path):
        if name not in weights or tuple(weights[name].weight.shape) != tuple(keep.shape):
            raise UserError("masks", f"mask {name!r} does not match the model (missing weight or other shape)")
        weights[name].weight.mul_(keep.to(weights[name].weight.device, weights[name].weight.dtype))
        count += 1
    return count
