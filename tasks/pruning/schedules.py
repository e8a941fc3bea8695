"""Layerwise sparsity schedules: each turns the target S into one sparsity per block,
whose mean is S.

- uniform: S everywhere;
- owl (Yin et al. 2024): D_b = share of the block's Wanda scores above owl_m x their mean;
  D' = min-max(D) scaled to [0, 2*owl_lambda]; density_b = D'_b - mean(D') + 1 - S;
- cwl: I_b = 1 - (mean pairwise Pearson correlation across languages of the block's
  per-language RMS activations), then the OWL allocation with I for D and a signed cwl_lambda;
- a file: an explicit list (YAML/JSON), one value per block, mean equal to S.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..errors import UserError
from ..registry import Registry
from .wanda import wanda_score

SCHEDULES: Registry[type["Schedule"]] = Registry("schedule")


class Schedule:
    @dataclass
    class Params:
        pass

    needs_stats = False  # a dense calibration pass collecting ActStats before pruning

    def __init__(self, params):
        self.params = params

    def block_score(self, linears: dict, stats: dict) -> float:
        raise NotImplementedError

    def allocate(self, scores: list[float], target: float, n_blocks: int) -> list[float]:
        return [target] * n_blocks


@SCHEDULES.register("uniform")
class Uniform(Schedule):
    pass


def owl_allocate(scores: list[float], target: float, lam: float) -> list[float]:
    d = torch.tensor(scores, dtype=torch.float64)
    span = d.max() - d.min()
    if span == 0:
        return [target] * len(scores)
    d = (d - d.min()) / span * (2 * lam)
    density = d - d.mean() + (1 - target)
    return (1 - density).tolist()


@SCHEDULES.register("owl")
class OWL(Schedule):
    @dataclass
    class Params:
        owl_m: float = 5.0
        owl_lambda: float = 0.08

    needs_stats = True

    def block_score(self, linears, stats):
        scores = torch.cat([wanda_score(lin.weight, stats[n].norm_sq()).flatten() for n, lin in linears.items()])
        return (scores > self.params.owl_m * scores.mean()).double().mean().item()

    def allocate(self, scores, target, n_blocks):
        return owl_allocate(scores, target, self.params.owl_lambda)


@SCHEDULES.register("cwl")
class CWL(Schedule):
    @dataclass
    class Params:
        cwl_lambda: float = 0.08

    needs_stats = True

    def block_score(self, linears, stats):
        a = torch.cat([stats[n].rms() for n in linears], dim=1)  # [n_lang, features]
        if a.shape[0] < 2:
            raise UserError("schedule", "cwl needs at least 2 calibration languages")
        corr = torch.corrcoef(a)
        rho = torch.stack([corr[i, j] for i, j in itertools.combinations(range(a.shape[0]), 2)]).mean()
        return 1 - rho.item()

    def allocate(self, scores, target, n_blocks):
        return owl_allocate(scores, target, self.params.cwl_lambda)


class ListSchedule(Schedule):
    """An explicit per-block list (searches pass one; FileSchedule reads one)."""

    def __init__(self, values):
        super().__init__(None)
        if not isinstance(values, (list, tuple)) or not values or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
            raise UserError("schedule", "a per-block schedule must be a non-empty list of numbers")
        self.values = [float(x) for x in values]

    def allocate(self, scores, target, n_blocks):
        if len(self.values) != n_blocks:
            raise UserError("schedule", f"the schedule lists {len(self.values)} sparsities but the model has {n_blocks} blocks")
        mean = sum(self.values) / n_blocks
        if abs(mean - target) > 1e-6:
            raise UserError("schedule", f"the schedule's mean sparsity is {mean:.6g}, not the requested {target:g}")
        return list(self.values)


class FileSchedule(ListSchedule):
    """An explicit per-block list read from YAML/JSON: `[0.4, 0.5, 0.6]` or `{sparsities: [...]}`."""

    def __init__(self, path: str):
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise UserError("schedule", f"cannot read schedule file {path!r}: {e}") from None
        if isinstance(data, dict) and set(data) == {"sparsities"}:
            data = data["sparsities"]
        if not isinstance(data, list):
            raise UserError("schedule", f"{path!r} must hold a list of per-block sparsities (or {{sparsities: [...]}})")
        super().__init__(data)


def check_targets(targets: list[float]) -> list[float]:
    bad = [t for t in targets if not 0 <= t < 1]
    if bad:
        raise UserError("schedule", f"per-block sparsities must lie in [0, 1); this schedule gives {bad[0]:.4g} (lower its lambda)")
    return targets
