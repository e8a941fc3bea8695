"""The method interface and its registry.

A method is a class registered with `@METHODS.register(name)` with
- `Params`: a dataclass of its hyperparameters (names as docs/methods.md gives them);
- `new_stats(name, linear, languages)`: the statistic its hooks accumulate, or None;
  `languages` is the calibration languages' mix weights (float64 [n_lang], sum 1);
- `weights_languages`: True when its score weights per-language statistics by those
  weights (mwanda, mria); methods that pool all calibration tokens (wanda, ria,
  sparsegpt) take the mix as the share of windows only, so `allocation: equal` is refused;
- `prune(linear, stats, fraction, nm)`: a keep-mask; it may also update the
  kept weights (SparseGPT). The pipeline zeroes the pruned weights.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Method:
    @dataclasses.dataclass
    class Params:
        pass

    needs_calibration = True
    weights_languages = False
    # The masks alone rebuild the pruned model from the dense one unless the method also changes the
    # kept weights (SparseGPT's reconstruction): then analyses and `compare` need the saved model.
    updates_weights = False

    def __init__(self, params: "Method.Params"):
        self.params = params

    def new_stats(self, name: str, linear: nn.Linear, languages: torch.Tensor):
        return None

    def prune(self, linear: nn.Linear, stats, fraction: float, nm: tuple[int, int] | None) -> torch.Tensor:
        raise NotImplementedError


def updates_weights(method: str) -> bool:
    """Does `method` change the weights it keeps? (unknown names: False, as for runs of other tools)"""
    return method in METHODS and METHODS.get(method).updates_weights


def hp_names(params_cls) -> list[str]:
    return [f.name for f in dataclasses.fields(params_cls)]


def parse_hp(params_cls, hp: dict[str, Any], owner: str):
    """Build `params_cls` from {name: value-or-string}; unknown keys, bad types and choices raise UserError."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    types = typing.get_type_hints(params_cls)
    values = {}
    for key, raw in hp.items():
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise UserError("hp", f"unknown hyperparameter {key!r} for {owner}; allowed: {allowed}")
        values[key] = convert(raw, types[key], fields[key].metadata.get("choices"), f"hp {key}")
    return params_cls(**values)


def convert(raw: Any, typ: type, choices: tuple | None, field: str):
    try:
        if typ is bool:
            if isinstance(raw, bool):
                value = raw
            elif str(raw).lower() in ("true", "1", "yes"):
                value = True
            elif str(raw).lower() in ("false", "0", "no"):
                value = False
            else:
                raise ValueError
        elif typ is int:
            value = int(raw) if not isinstance(raw, float) or raw.is_integer() else int("x")
        elif typ is float:
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        else:
            value = str(raw)
    except (TypeError, ValueError):
        raise UserError(field, f"must be {'a finite float' if typ is float else typ.__name__}, got {raw!r}") from None
    if choices and value not in choices:
        raise UserError(field, f"must be one of {', '.join(map(str, choices))}, got {raw!r}")
    return value
