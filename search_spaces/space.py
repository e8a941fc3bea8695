"""Search spaces as data (`search_spaces/*.yaml`) and what a sampled point means.

A space file holds Optuna distributions in a short form, the keyword arguments of
Optuna's own distribution classes plus a `type`:

    lambda_var: {type: float, low: 0.0, high: 4.0}          # FloatDistribution(low, high, step, log)
    owl_m:      {type: float, low: 3.0, high: 10.0, when: {schedule: owl}}
    schedule:   {type: categorical, choices: [uniform, owl, cwl, profile]}

and two derived blocks that need the search file to be complete:
- `mix: true`: one `mix.<lang>` ~ U(0, 1) per calibration language of the search
  file; the weights are w_l = -log(u_l) normalised, a flat-Dirichlet point whose
  coordinates TPE can model independently (a softmax or stick-breaking
  parametrisation would couple them);
- `profile: {points: K, offset: {...}}`: per-block sparsities from K control-point
  offsets, linearly interpolated over depth and re-centred on the target.

Parameter names are the engine's hyperparameter names (lambda_var, owl_m, ...)
or `schedule`; `when` makes a parameter conditional on another's value, so
schedule hyperparameters are only sampled for their schedule. Unconditional
parameters are what `study.ask(fixed_distributions=...)` gets; the conditional
ones are suggested once their condition holds. Adding a space is adding a file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import UserError

SPACES_DIR = Path(__file__).resolve().parent  # the shipped spaces sit beside this loader (package data)
PROFILE = "profile"  # the schedule kind whose per-block list comes from `profile`


def schedule_kinds() -> list[str]:
    """What a space's `schedule` may choose: the engine's registered schedules, or a searched profile."""
    from tasks.pruning import SCHEDULES

    return [*SCHEDULES.names(), PROFILE]
MAX_BLOCK_SPARSITY = 0.99  # the engine wants every block in [0, 1)
_TYPES = {"float": ("low", "high", "step", "log"), "int": ("low", "high", "step", "log"), "categorical": ("choices",)}


@dataclass
class Param:
    name: str
    dist: Any  # an optuna BaseDistribution
    when: dict[str, list] = field(default_factory=dict)  # {other param: allowed values}


@dataclass
class Space:
    name: str
    path: str
    description: str
    params: list[Param]
    mix: bool
    profile_points: int = 0
    profile_offset: Any = None  # distribution of each control point's offset from the target
    profile_when: dict[str, list] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def searches(self, name: str) -> bool:
        return name in self.names()

    def distributions(self, languages: list[str]) -> dict[str, Any]:
        """The unconditional part, for `study.ask(fixed_distributions=...)`."""
        from optuna.distributions import FloatDistribution

        out = {f"mix.{l}": FloatDistribution(0.0, 1.0) for l in languages} if self.mix else {}
        out.update({p.name: p.dist for p in self.params if not p.when})
        if self.profile_points and not self.profile_when:
            out.update({f"profile.{i}": self.profile_offset for i in range(self.profile_points)})
        return out


# ---------------------------------------------------------------- loading


def shipped() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(ref: str, base: Path | None = None) -> Space:
    """A shipped space by name (`mwanda_mix`) or a path to a space file (relative to `base`)."""
    path = _find(ref, base)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError("space", f"cannot read space file {str(path)!r}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError("space", f"{str(path)!r} must be a mapping (description, mix, params, profile)")
    unknown = set(raw) - {"description", "mix", "params", "profile"}
    if unknown:
        raise UserError("space", f"{path.name}: unknown key {sorted(unknown)[0]!r}; allowed: description, mix, params, profile")
    if not isinstance(raw.get("mix", False), bool):
        raise UserError("space", f"{path.name}: mix must be true or false")
    params = [_param(path.name, n, spec) for n, spec in (raw.get("params") or {}).items()]
    space = Space(path.stem, str(path), str(raw.get("description", "")), params, bool(raw.get("mix", False)))
    if raw.get("profile") is not None:
        prof = dict(raw["profile"]) if isinstance(raw["profile"], dict) else {}
        points = prof.pop("points", None)
        if not isinstance(points, int) or isinstance(points, bool) or points < 1:
            raise UserError("space", f"{path.name}: profile.points must be an integer >= 1")
        when = prof.pop("when", {}) or {}
        offset = _param(path.name, "profile.offset", prof.pop("offset", None))
        if prof:
            raise UserError("space", f"{path.name}: unknown key profile.{sorted(prof)[0]}; allowed: points, offset, when")
        space.profile_points, space.profile_offset, space.profile_when = points, offset.dist, _when(path.name, "profile", when)
    names = set(space.names())
    for p in space.params + ([Param("profile", None, space.profile_when)] if space.profile_points else []):
        for other in p.when:
            if other not in names:
                raise UserError("space", f"{path.name}: {p.name}.when refers to {other!r}, which the space does not define")
    sched = next((p for p in params if p.name == "schedule"), None)
    if sched is not None:
        kinds = schedule_kinds()
        bad = [c for c in sched.dist.choices if c not in kinds]
        if bad:
            raise UserError("space", f"{path.name}: schedule choice {bad[0]!r}; allowed: {', '.join(kinds)}")
        if PROFILE in sched.dist.choices and not space.profile_points:
            raise UserError("space", f"{path.name}: schedule offers {PROFILE!r} but the space has no profile block")
    return space


def _find(ref: str, base: Path | None) -> Path:
    if not isinstance(ref, str) or not ref:
        raise UserError("space", "give a space name or file")
    looks_like_path = ref.endswith((".yaml", ".yml")) or "/" in ref or ref.startswith(".")
    if not looks_like_path:
        path = SPACES_DIR / f"{ref}.yaml"
        if not path.is_file():
            raise UserError("space", f"unknown space {ref!r}; shipped: {', '.join(shipped())}, or a path to a space file")
        return path
    path = Path(os.path.expanduser(ref))
    path = path if path.is_absolute() else (base or Path.cwd()) / path
    if not path.is_file():
        raise UserError("space", f"space file {str(path)!r} does not exist")
    return Path(os.path.abspath(path))


def _param(file: str, name: str, spec: Any) -> Param:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, list):  # shorthand: a list is a categorical choice
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
        raise UserError("space", f"{file}: {name} must be {{type: float|int|categorical, ...}}")
    spec = dict(spec)
    kind = spec.pop("type")
    when = _when(file, name, spec.pop("when", {}) or {})
    extra = set(spec) - set(_TYPES[kind])
    if extra:
        raise UserError("space", f"{file}: {name}: unknown key {sorted(extra)[0]!r} for type {kind}; allowed: {', '.join(_TYPES[kind])}, when")
    cls = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}[kind]
    try:
        dist = cls(**spec)
    except (TypeError, ValueError) as e:
        raise UserError("space", f"{file}: {name}: {e}") from None
    return Param(name, dist, when)


def _when(file: str, name: str, when: Any) -> dict[str, list]:
    if not isinstance(when, dict):
        raise UserError("space", f"{file}: {name}.when must map a parameter to a value or list of values")
    return {k: list(v) if isinstance(v, list) else [v] for k, v in when.items()}


# ---------------------------------------------------------------- sampling


@dataclass
class Point:
    """What a trial's parameters mean for the engine."""

    mix: dict[str, float] | None  # normalised weights, or None when the space does not search the mix
    hp: dict[str, float]  # searched hyperparameters
    schedule: str | None  # searched schedule kind, or None (the search file's schedule)
    profile: list[float] | None = None  # per-block sparsities when schedule == profile


def sample(trial, space: Space, languages: list[str], target: float, n_blocks: int | None) -> Point:
    """Suggest every parameter of `space` on an asked trial (enqueued values win, as Optuna does)."""
    values: dict[str, Any] = {}
    for p in space.params:
        if _active(p.when, values):
            values[p.name] = _suggest(trial, p.name, p.dist)
    mix = None
    if space.mix:
        mix = dirichlet({l: _suggest(trial, f"mix.{l}", _unit()) for l in languages})
    profile = None
    kind = values.pop("schedule", None)
    if space.profile_points and _active(space.profile_when, {**values, "schedule": kind}):
        offsets = [_suggest(trial, f"profile.{i}", space.profile_offset) for i in range(space.profile_points)]
        if kind == PROFILE or kind is None:
            if not n_blocks:
                raise UserError("space", "a per-block profile needs the model's number of blocks")
            profile = profile_schedule(offsets, target, n_blocks)
            kind = PROFILE
    return Point(mix, values, kind, profile)


def _active(when: dict[str, list], values: dict[str, Any]) -> bool:
    return all(values.get(k) in allowed for k, allowed in when.items())


def _unit():
    from optuna.distributions import FloatDistribution

    return FloatDistribution(0.0, 1.0)


def _suggest(trial, name: str, dist):
    """`trial.suggest_*` for a distribution object (what ask(fixed_distributions) does)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")


def dirichlet(u: dict[str, float]) -> dict[str, float]:
    """w_l = -log(u_l) / sum: independent uniforms -> a flat-Dirichlet point.

    u = 1 gives weight 0 (a language left out); if every u is 1 the point is
    undefined and the uniform mix is used instead."""
    w = {l: -math.log(min(max(x, 1e-12), 1.0)) for l, x in u.items()}
    total = sum(w.values())
    if total <= 0:
        return {l: 1 / len(u) for l in u}
    return {l: v / total for l, v in w.items()}


def dirichlet_point(weights: dict[str, float]) -> dict[str, float]:
    """The inverse for enqueued baselines: u_l = exp(-w_l) (weight 0 -> u = 1)."""
    return {l: math.exp(-w) for l, w in weights.items()}


def profile_schedule(offsets: list[float], target: float, n_blocks: int) -> list[float]:
    """Per-block sparsities: control points at equal depths, linear in between, then shifted
    so the mean is `target`, and clipped into [0, MAX_BLOCK_SPARSITY] with the clipped
    excess spread over the blocks that still have room, so the mean stays exact."""
    k = len(offsets)
    values = []
    for b in range(n_blocks):
        x = 0.0 if n_blocks == 1 or k == 1 else b / (n_blocks - 1) * (k - 1)
        i = min(int(x), k - 2) if k > 1 else 0
        frac = x - i
        values.append(offsets[0] if k == 1 else offsets[i] * (1 - frac) + offsets[i + 1] * frac)
    shift = target - sum(values) / n_blocks
    values = [v + shift for v in values]
    lo, hi = 0.0, MAX_BLOCK_SPARSITY
    for _ in range(4 * n_blocks + 8):
        values = [min(max(v, lo), hi) for v in values]
        gap = target * n_blocks - sum(values)
        if abs(gap) < 1e-12:
            break
        room = [i for i, v in enumerate(values) if (gap > 0 and v < hi) or (gap < 0 and v > lo)]
        for i in room:
            values[i] += gap / len(room)
    return values
