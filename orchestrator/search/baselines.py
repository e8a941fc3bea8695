"""The mixes a search must beat (a search file's `baselines:`), each one enqueued trial run first.

`baselines:` is `true` (the uniform mix and the first objective's language alone), `false`,
or a list of `uniform`, `target` and `{name, calib, hp, schedule}` mappings, where `calib`
is a mix (`en=0.7,sw=0.3`) or `{from: FILE}`: the model's training-language shares, turned
into the MBS mix over the calibration languages (`tasks.data.langs.mix_from_distribution`).
Every baseline is Wanda-equivalent (M-Wanda's coefficients 0, uniform schedule) unless its
mapping says otherwise: a baseline measures the calibration mix, not the method's extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from tasks.errors import UserError

from ..config import Strict, local_path

WORDS = ("uniform", "target")
# Zero coefficients make M-Wanda (and mria) score as Wanda (RIA) does: the baseline is the plain method.
PLAIN = {"mwanda": {"lambda_var": 0.0, "lambda_prob": 0.0}, "mria": {"lambda_var": 0.0, "lambda_prob": 0.0}}


class CalibFrom(Strict):
    from_: str = Field(alias="from")  # a YAML file of training-language shares (MBS)


class BaselineSpec(Strict):
    name: str = Field(min_length=1, pattern=r"^[\w][\w.\-]*$")  # a tag value and part of metric names
    calib: Any  # a mix, or {from: FILE}
    hp: dict[str, Any] = Field(default_factory=dict)
    schedule: str = "uniform"

    @field_validator("calib", mode="before")
    @classmethod
    def _calib_form(cls, v):
        if isinstance(v, dict) and set(v) == {"from"} and isinstance(v["from"], str):
            return CalibFrom.model_validate(v)
        if isinstance(v, str):
            return v
        raise ValueError("a mix like en=0.7,sw=0.3, or {from: FILE} (training-language shares)")


@dataclass
class Baseline:
    """A resolved baseline: `calib` None means the uniform mix over the calibration languages."""

    name: str
    calib: str | None
    hp: dict[str, Any] = field(default_factory=dict)
    schedule: str = "uniform"
    where: str = "baselines"


def parse(cfg, base: Path) -> None:
    """The list form's mappings as `BaselineSpec`s (errors name `baselines[i].<key>`); `{from: FILE}`
    relative to the search file, as every path in it."""
    from ..config import validate

    if not isinstance(cfg.baselines, list):
        return
    for i, b in enumerate(cfg.baselines):
        if isinstance(b, str):
            continue
        if not isinstance(b, dict):
            raise UserError(f"baselines[{i}]", f"allowed: {', '.join(WORDS)}, or {{name: NAME, calib: MIX | {{from: FILE}}}}; got {b!r}")
        spec = validate(BaselineSpec, b, f"baselines[{i}]")
        if isinstance(spec.calib, CalibFrom):
            spec.calib.from_ = local_path(spec.calib.from_, base, loose=True)
        cfg.baselines[i] = spec


def resolve(cfg, target: str | None) -> list[Baseline]:
    """The file's baselines, checked (words, mixes, shares files, names); their engine checks are `file.check`'s."""
    from tasks.data.langs import canonical_mix, mix_from_distribution, parse_mix

    plain = dict(PLAIN.get(cfg.method, {}))
    if cfg.baselines is False:
        return []
    if cfg.baselines is True:
        out = [Baseline("uniform-wanda", None, plain)]
        return out + ([Baseline(f"{target}-only-wanda", target, plain)] if target else [])
    out = []
    for i, b in enumerate(cfg.baselines):
        where = f"baselines[{i}]"
        if isinstance(b, str):
            if b not in WORDS:
                raise UserError(where, f"unknown baseline {b!r}; allowed: {', '.join(WORDS)}, or {{name: NAME, calib: MIX}}")
            if b == "target" and not target:
                raise UserError(where, "target: the first objective names no language (ppl.<lang>); use {name: NAME, calib: LANG}")
            out.append(Baseline(b, None if b == "uniform" else target, plain, where=where))
            continue
        if isinstance(b.calib, CalibFrom):
            calib = mix_from_distribution(b.calib.from_, cfg.calibration.languages, field=f"{where}.calib.from")
        else:
            calib = canonical_mix(parse_mix(b.calib, f"{where}.calib"))
        out.append(Baseline(b.name, calib, {**plain, **b.hp}, b.schedule, where))
    names = [b.name for b in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UserError("baselines", f"two baselines are named {dup!r}; give each its own name")
    return out


def check(cfg, baselines: list[Baseline], source, spec) -> None:
    """Each baseline's languages in the calibration source and its configuration through the engine
    (`spec(calib, schedule, hp)` -> a `PruneSpec` to check)."""
    from tasks.api import check_spec
    from tasks.data.langs import parse_mix

    for b in baselines:
        calib = b.calib or ",".join(cfg.calibration.languages)
        for lang in parse_mix(calib, f"{b.where}.calib"):
            try:
                source.check_language(lang, "calib")
            except UserError as e:
                raise UserError(f"{b.where}.calib", e.message) from None
        try:
            check_spec(spec(calib, b.schedule, b.hp))
        except UserError as e:
            raise UserError(f"{b.where}.{e.field if e.field in ('hp', 'schedule') else 'calib'}", e.message) from None


def enqueue(study, cfg, space, baselines: list[Baseline], done_key: str, baseline_key: str, override_key: str) -> list[str]:
    """Enqueue the baselines a study has not enqueued yet (a resumed study runs none twice).

    What the space can express goes in as parameters, so the sampler learns from the
    baseline's value with the parameters that really ran; the rest (a language outside
    the searched ones, a fixed coefficient, a schedule) as an override the driver applies.
    The exact mix always goes in the override too, so rounding never changes it."""
    from tasks.data.langs import parse_mix

    from search_spaces.space import dirichlet_point

    done = list(study.user_attrs.get(done_key) or [])
    langs = list(cfg.calibration.languages)
    new = [b for b in baselines if b.name not in done]
    for b in new:
        weights = parse_mix(b.calib) if b.calib else {l: 1 / len(langs) for l in langs}
        params: dict[str, Any] = {}
        override: dict[str, Any] = {"calib": b.calib} if b.calib else {}
        if space.mix and set(weights) <= set(langs):
            params.update({f"mix.{l}": u for l, u in dirichlet_point({l: weights.get(l, 0.0) for l in langs}).items()})
        for k, v in b.hp.items():
            if space.searches(k):
                params[k] = v
            else:
                override.setdefault("hp", {})[k] = v
        choices = next((list(p.dist.choices) for p in space.params if p.name == "schedule"), [])
        if b.schedule in choices:
            params["schedule"] = b.schedule
        elif space.profile_points and not space.profile_when and b.schedule == "uniform":
            params.update({f"profile.{i}": 0.0 for i in range(space.profile_points)})  # a flat profile is uniform
        else:
            override["schedule"] = b.schedule  # also over a file's `schedule: owl`: baselines are uniform unless told
        study.enqueue_trial(params, user_attrs={baseline_key: b.name, **({override_key: override} if override else {})})
    study.set_user_attr(done_key, done + [b.name for b in new])
    return [b.name for b in new]
