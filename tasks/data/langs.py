"""Calibration-language specs: "en", "en,de" (equal shares), "en=0.7,de=0.3"."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml

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


ALLOCATIONS = ("proportional", "equal")


def allocate(weights: dict[str, float], n: int, allocation: str = "proportional") -> dict[str, int]:
    """Calibration windows per language of a mix (zero-weight languages get none).

    - proportional: `split_counts` of the weights, but every language with weight > 0 gets at least
      one window (a language with weight and no window would have no statistic): languages short of
      one get one each and the rest is split again over the others, until none is short;
    - equal: the same count for every language with weight > 0 (largest remainder for the leftover).
    """
    if allocation not in ALLOCATIONS:
        raise UserError("allocation", f"must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    positive = sorted(l for l, w in weights.items() if w > 0)
    if n < len(positive):
        raise UserError("nsamples", f"{n} windows cannot give each of the {len(positive)} languages with weight > 0 "
                                    f"({', '.join(positive)}) one; use nsamples >= {len(positive)}")
    if allocation == "equal":
        got = split_counts(dict.fromkeys(positive, 1 / len(positive)), n)
        return {l: got.get(l, 0) for l in sorted(weights)}
    floored: set[str] = set()
    while True:
        rest = [l for l in positive if l not in floored]
        total = sum(weights[l] for l in rest) if floored else 1.0  # first pass: exactly today's split_counts
        split = split_counts({l: weights[l] / total for l in rest}, n - len(floored)) if rest else {}
        short = {l for l in rest if split[l] == 0}
        if not short:
            return {l: 1 if l in floored else split.get(l, 0) for l in sorted(weights)}
        floored |= short


def mix_from_distribution(shares, languages, field: str = "calib") -> str:
    """The MBS mix (Zeng et al., "Multilingual Brain Surgeon"): the model's training-language shares
    restricted to the calibration `languages` and renormalised, as a canonical mix string.

    `shares` is {lang: share} or a YAML file holding one, either bare or as
    `{shares: {...}, source: "where the numbers come from"}`; shares need not sum to 1.
    """
    where = "the shares"
    if isinstance(shares, (str, os.PathLike)):
        where = repr(str(shares))
        try:
            shares = yaml.safe_load(Path(shares).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise UserError(field, f"cannot read training-language shares from {where}: {e}") from None
        if isinstance(shares, dict) and "shares" in shares:
            extra = set(shares) - {"shares", "source"}
            if extra:
                raise UserError(field, f"unknown key {sorted(extra)[0]!r} in {where}; allowed: shares, source")
            shares = shares["shares"]
    if not isinstance(shares, dict) or not shares:
        raise UserError(field, f"{where} must map language codes to training shares, e.g. {{en: 0.6, sw: 0.01}}")
    languages = list(languages)
    if not languages:
        raise UserError(field, "no calibration languages to restrict the shares to")
    picked = {}
    for lang in languages:
        if lang not in shares:
            raise UserError(field, f"language {lang!r} has no training share in {where}; it has: {', '.join(sorted(map(str, shares)))}")
        value = shares[lang]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(field, f"training share of {lang!r} in {where} must be a finite number >= 0, got {value!r}")
        picked[lang] = float(value)
    total = sum(picked.values())
    if total <= 0:
        raise UserError(field, f"the training shares of {', '.join(languages)} in {where} are all zero; at least one must be > 0")
    return canonical_mix({lang: v / total for lang, v in picked.items()})
