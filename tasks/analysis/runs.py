"""A pruned run's weights, read one tensor at a time against the dense base model.

A run is given as a `masks.safetensors` file, or a folder written by `polyprune prune --out`.
Masks rebuild Wanda / magnitude / M-Wanda models exactly; SparseGPT also updates the kept
weights, so its run needs the saved model (`model.safetensors`, or shards with an index).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import UserError
from ..pruning.base import updates_weights
from ..pruning.masks import unpack


def _saved_model_files(folder: Path) -> dict[str, Path] | None:
    """Weight name -> safetensors file of a model saved with save_pretrained, or None."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in weight_map.items()}
    single = folder / "model.safetensors"
    if single.exists():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    return None


class RunWeights:
    """`weight(name, dense)` gives the run's version of a dense weight (None: unchanged);
    `keep(name, dense)` its keep-mask."""

    def __init__(self, name: str, path):
        self.name = name
        path = Path(path)
        self.masks: Path | None = None
        self.files: dict[str, Path] | None = None
        if path.is_file():
            self.masks = path
        elif path.is_dir():
            method = None
            if (path / "result.json").exists():
                method = json.loads((path / "result.json").read_text()).get("config", {}).get("method")
            saved = _saved_model_files(path)
            if updates_weights(method) or not (path / "masks.safetensors").exists():
                if saved is None:
                    why = f"{method} updates the kept weights" if updates_weights(method) else "it has no masks.safetensors"
                    raise UserError("runs", f"run {name!r}: {str(path)!r} has no saved model and {why}")
                self.files = saved
            else:
                self.masks = path / "masks.safetensors"
        else:
            raise UserError("runs", f"run {name!r}: {str(path)!r} is neither a masks file nor a run folder")
        if self.masks is not None:
            try:
                with safe_open(str(self.masks), framework="pt") as f:
                    self.shapes = json.loads(f.metadata()["shapes"])
            except Exception as e:  # not safetensors, or not written by save_masks
                raise UserError("runs", f"run {name!r}: {str(self.masks)!r} is not a polyprune masks file ({type(e).__name__})") from None

    def _read(self, name: str) -> torch.Tensor | None:
        if self.masks is not None:
            if name not in self.shapes:
                return None
            with safe_open(str(self.masks), framework="pt") as f:
                return unpack(f.get_tensor(name), self.shapes[name])
        if name not in self.files:
            return None
        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def _check(self, name: str, t: torch.Tensor, dense: torch.Tensor) -> None:
        if tuple(t.shape) != tuple(dense.shape):
            raise UserError("runs", f"run {self.name!r}: {name} has shape {tuple(t.shape)}, the base model {tuple(dense.shape)}")

    def weight(self, name: str, dense: torch.Tensor) -> torch.Tensor | None:
        t = self._read(name)
        if t is None:
            return None
        self._check(name, t, dense)
        t = t.to(dense.device)
        return dense * t.to(dense.dtype) if self.masks is not None else t.to(dense.dtype)

    def keep(self, name: str, dense: torch.Tensor) -> torch.Tensor:
        t = self._read(name)
        if t is None:
            return torch.ones(dense.shape, dtype=torch.bool)
        self._check(name, t, dense)
        return t if self.masks is not None else t != 0
