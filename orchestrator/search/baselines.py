"""The baselines a search must beat (a search file's `baselines:`), run as the literature runs them,
and their stage: fixed cells run before the trials. They are not Optuna trials: telling the sampler
a plain-Wanda value under M-Wanda's parameters would teach it a wrong label.

`baselines:` is `true` (the uniform mix and the first objective's language alone), `false`, or a list
of `uniform`, `target` and `{name, calib, method, hp, schedule}` mappings, where `calib` is a mix
(`en=0.7,sw=0.3`) or `{from: FILE}`: the model's training-language shares, turned into the MBS mix
over the calibration languages (`tasks.data.langs.mix_from_distribution`).

Each runs the method the literature ran on that calibration set (`LITERATURE`: plain `wanda` for
M-Wanda, pooled statistics and no coefficients; `ria` for mria; a method as itself otherwise, e.g.
`sparsegpt`), with a uniform schedule, unless its mapping names a method, hp or schedule. Unless
`baselines: false`, one more: the search's own method at its default coefficients on the uniform mix,
so a reader sees what the search adds over the method alone. A label names the method:
`wanda·uniform`, `wanda·sw-only`, `wanda·mbs`, `mwanda·uniform`.

The stage (`Baselines`): each baseline's cell (the search's seed; valid, then test, whatever
`test_every_trial` says) runs once, as a run of the search's experiment tagged `polyprune.kind=baseline`
and `polyprune.baseline=<label>`; a rerun finds it by its cell id and runs only what has no FINISHED run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from tasks.errors import UserError

from ..config import Strict, local_path
from ..names import BASELINE
from .reruns import FixedRuns

WORDS = ("uniform", "target")
# The method the literature ran where the search runs a multilingual variant of it.
LITERATURE = {"mwanda": "wanda", "mria": "ria"}
SEP = "·"  # method·name
KIND_BASELINE = "baseline"  # the runs' polyprune.kind


class CalibFrom(Strict):
    from_: str = Field(alias="from")  # a YAML file of training-language shares (MBS)


class BaselineSpec(Strict):
    name: str = Field(min_length=1, pattern=r"^[\w][\w.\-]*$")  # part of the label, a tag value and metric names
    calib: Any  # a mix, or {from: FILE}
    method: str | None = None  # default: the literature's method for the search's (LITERATURE)
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
    method: str
    calib: str | None
    hp: dict[str, Any] = field(default_factory=dict)
    schedule: str = "uniform"
    where: str = "baselines"

    @property
    def label(self) -> str:
        return f"{self.method}{SEP}{self.name}"


def target_language(cfg) -> str | None:
    """The first objective's language (ppl.sw -> sw): the single-language baseline."""
    m = cfg.objectives[0].metric
    return m[len("ppl."):] if m.startswith("ppl.") and m != "ppl.mean" else None


def metric_key(label: str) -> str:
    """A label as it appears in a metric name (MLflow allows no `·`): wanda·uniform -> wanda.uniform."""
    return label.replace(SEP, ".")


def literature(method: str) -> str:
    return LITERATURE.get(method, method)


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
    """The file's baselines, checked (words, mixes, shares files, labels); their engine checks are `check`'s."""
    from tasks.data.langs import canonical_mix, mix_from_distribution, parse_mix

    if cfg.baselines is False:
        return []
    plain = literature(cfg.method)
    words = list(WORDS) if cfg.baselines is True and target else ["uniform"] if cfg.baselines is True else cfg.baselines
    out = []
    for i, b in enumerate(words):
        where = "baselines" if cfg.baselines is True else f"baselines[{i}]"
        if isinstance(b, str):
            if b not in WORDS:
                raise UserError(where, f"unknown baseline {b!r}; allowed: {', '.join(WORDS)}, or {{name: NAME, calib: MIX}}")
            if b == "target" and not target:
                raise UserError(where, "target: the first objective names no language (ppl.<lang>); use {name: NAME, calib: LANG}")
            out.append(Baseline("uniform", plain, None, where=where) if b == "uniform" else
                       Baseline(f"{target}-only", plain, target, where=where))
            continue
        if isinstance(b.calib, CalibFrom):
            calib = mix_from_distribution(b.calib.from_, cfg.calibration.languages, field=f"{where}.calib.from")
        else:
            calib = canonical_mix(parse_mix(b.calib, f"{where}.calib"))
        out.append(Baseline(b.name, b.method or plain, calib, dict(b.hp), b.schedule, where))
    own = Baseline("uniform", cfg.method, None)  # the search's own method alone: what the search adds over it
    if own.method != plain and own.label not in [b.label for b in out]:
        out.append(own)
    labels = [b.label for b in out]
    dup = next((n for n in labels if labels.count(n) > 1), None)
    if dup:
        raise UserError("baselines", f"two baselines are labelled {dup!r}; give each its own name")
    return out


def check(cfg, space, baselines: list[Baseline], source) -> None:
    """Each baseline's languages in the calibration source and its configuration through the engine."""
    from tasks.api import check_spec
    from tasks.data.langs import parse_mix

    from .cells import baseline_spec

    for b in baselines:
        for lang in parse_mix(b.calib or ",".join(cfg.calibration.languages), f"{b.where}.calib"):
            try:
                source.check_language(lang, "calib")
            except UserError as e:
                raise UserError(f"{b.where}.calib", e.message) from None
        try:
            check_spec(baseline_spec(cfg, space, b))
        except UserError as e:
            raise UserError(f"{b.where}.{e.field if e.field in ('hp', 'schedule', 'method') else 'calib'}", e.message) from None


class Baselines:
    """The stage: the baselines' cells without a FINISHED run, before the trials (docs/extending.md)."""

    def __init__(self, ctx):
        from .cells import baseline_cell

        self.ctx = ctx
        self.all = resolve(ctx.cfg, target_language(ctx.cfg))
        self.cells = {b.label: baseline_cell(ctx.cfg, ctx.space, b, ctx.ev_full) for b in self.all}
        self.runs, self.planned = FixedRuns(ctx, KIND_BASELINE, []), False  # planned once the search is open

    def pending(self) -> bool:
        if not self.planned:  # two baselines of one cell (one mix twice) run once
            self.runs = FixedRuns(self.ctx, KIND_BASELINE, [(cell, {BASELINE: label}, label) for label, cell in self.cells.items()])
            self.planned = True
        return bool(self.runs.todo)

    def run(self):
        return self.runs.run(f"search {self.ctx.cfg.name}: baselines: {len(self.runs.todo)} of {self.runs.total} to run "
                             f"({', '.join(self.cells)})")

    def stop(self, status: str, why: str) -> None:
        self.runs.stop(status, why)

    def has_failures(self) -> bool:
        return self.runs.has_failures()

    def finish(self, summary: dict[str, Any]) -> None:
        """summary["baselines"]: each baseline's valid objectives and test numbers at the search's seed."""
        done = self.ctx.results(KIND_BASELINE)
        out = []
        for b in self.all:
            cell = self.cells[b.label]
            r = done.get(cell.cell_id) or {}
            m = r.get("metrics") or {}
            values = [m[k] for k in self.ctx.metrics] if all(k in m for k in self.ctx.metrics) else None
            out.append({"label": b.label, "method": b.method, "calib": cell.key["calib"], "schedule": cell.key["schedule"],
                        "hp": cell.key["hp"], "values": values, "test": {k: v for k, v in m.items() if k.startswith("test.")},
                        "mlflow_run_id": r.get("run_id"), "cell_id": cell.cell_id})
        summary["baselines"] = out
