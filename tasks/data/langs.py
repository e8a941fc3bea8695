"""Calibration-language specs: "en", "en,de" (equal shares), "en=0.7,de=0.3"."""

from __future__ import annotations

import math
import re

from ..errors import UserError

_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def parse_mix(spec: str, field: str = "calib") -> dict[str, float]:
    """Return {lang: weight} normalised to sum 1, in the order given."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(field, "empty; give languages like 'en', 'en,de' or 'en=0.7,de=0.3'")
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        code, _, w = part.partition("=")
        code = code.strip()
        if not _CODE.match(code):
            raise UserError(field, f"bad language code {code!r} in {spec!r}")
        if code in weights:
            raise UserError(field, f"language {code!r} given twice in {spec!r}")
        if w:
            try:
                weight = float(w)
            except ValueError:
                raise UserError(field, f"weight of {code!r} must be a number >= 0, got {w!r}") from None
            if not math.isfinite(weight) or weight < 0:
                raise UserError(field, f"weight of {code!r} must be a finite number >= 0, got {w!r}")
        else:
            weight = 1.0
        weights[code] = weight
    total = sum(weights.values())
    if total <= 0:
        raise UserError(field, f"mix weights in {spec!r} are all zero; at least one must be > 0")
    return {k: v / total for k, v in weights.items()}


def canonical_mix(weights: dict[str, float]) -> str:
    """Sorted, rounded, always with weights: 'de=0.3,en=0.7'. Zero-weight languages are dropped."""
    items = sorted((k, v) for k, v in weights.items() if v > 0)
    return ",".join(f"{k}={round(v, 6):g}" for k, v in items)


def split_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Largest-remainder rounding of n * weights; ties go to the language that sorts first."""
    langs = sorted(weights)
    exact = {l: weights[l] * n for l in langs}
    counts = {l: math.floor(exact[l]) for l in langs}
    left = n - sum(counts.values())
    by_remainder = sorted(langs, key=lambda l: (-(exact[l] - counts[l]), l))
    for l in by_remainder[:left]:
        counts[l] += 1
    return counts
