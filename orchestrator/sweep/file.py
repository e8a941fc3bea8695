"""Sweep files (docs/sweeps.md): load, validate, expand into cells.

Everything is checked before anything starts: the YAML schema (unknown keys are
errors), every path, and every cell through `tasks.api.check_spec`, so a typo in
cell 300 of 324 stops the sweep before cell 1 runs. Errors are `UserError`s whose
field is the sweep-file path of the offending value (`sparsities[1]`, `methods[2].hp`).
Sections and checks shared with search files are in `orchestrator.config`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, field_validator

from tasks.errors import UserError

from ..config import (CalibrationConfig, EvaluationConfig, ResourcesConfig, Strict, check_evaluation, check_fit, check_model,
                      model_path, read_mapping, resolve_evaluation, resolve_paths, run_options, validate)
from ..engine.cells import Cell, baseline_cell, prune_cell, prune_spec


class MethodEntry(Strict):
    name: str
    hp: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[\w][\w.\- ]*$")  # letters, digits, _ . - and spaces
    models: list[str] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    sparsities: list[str] = Field(min_length=1)
    calibration: CalibrationConfig
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    schedule: str = "uniform"
    evaluation: EvaluationConfig | None = None  # default: perplexity in every calibration language
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking_uri: str | None = None  # default: sqlite:///mlflow.db next to the sweep file
    save_model: bool = False  # log the full pruned model as an artifact (large)
    dtype: str = "auto"
    trust_remote_code: bool = False

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, v):
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @field_validator("sparsities", mode="before")
    @classmethod
    def _sparsity_text(cls, v):
        # YAML gives 0.5 as a float and 2:4 as a string; keep both as text, parsed by the engine.
        if not isinstance(v, list):
            return v
        return [str(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else s for s in v]


# ---------------------------------------------------------------- loading


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    """Parse and schema-check a sweep file; resolve its relative paths against its folder."""
    path = Path(path)
    cfg = validate(SweepConfig, read_mapping(path, "name, models, methods"))
    base = Path(os.path.abspath(path)).parent
    cfg.models = [model_path(m, base) for m in cfg.models]
    resolve_paths(cfg, base)
    return cfg


# ---------------------------------------------------------------- cells


def expand(cfg: SweepConfig) -> list[Cell]:
    """All cells, validated: per model its dense baseline, then methods x sparsities x languages x seeds."""
    from tasks.api import check_spec  # heavy (torch); only once a file has parsed

    ev = _evaluation(cfg)
    for i, m in enumerate(cfg.models):
        check_model(m, f"models[{i}]")
    check_evaluation(cfg, ev)
    checked: dict[str, Any] = {}  # check_spec does not depend on the model: once per spec
    cells: list[Cell] = []
    for mi, model in enumerate(cfg.models):
        cells.append(baseline_cell(model, cfg.dtype, ev, run_options(cfg), {"model": f"models[{mi}]"}))
        for ki, m in enumerate(cfg.methods):
            for si, sparsity in enumerate(cfg.sparsities):
                where = {"model": f"models[{mi}]", "method": f"methods[{ki}]", "sparsity": f"sparsities[{si}]"}
                if _is_zero(sparsity):
                    raise UserError(where["sparsity"], "0 is the dense baseline, evaluated once per model "
                                                       "automatically; give fractions in (0, 1) or N:M")
                for li, calib in enumerate(cfg.calibration.languages):
                    for di, seed in enumerate(cfg.seeds):
                        where = {**where, "calib": f"calibration.languages[{li}]", "seed": f"seeds[{di}]"}
                        raw = prune_spec(cfg, model, m.name, sparsity, calib, seed, cfg.schedule, m.hp)
                        memo = json.dumps({**raw.to_dict(), "model": ""}, sort_keys=True, default=str)
                        if memo not in checked:
                            try:
                                checked[memo] = check_spec(raw)
                            except UserError as e:
                                raise UserError(_where_of(e.field, where, m), e.message) from None
                        cells.append(prune_cell(model, checked[memo], cfg.dtype, ev, run_options(cfg), where))
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            a, b = seen[c.cell_id].where, c.where
            k = next((k for k in b if a.get(k) != b[k]), None)
            raise UserError(b[k] if k else "FILE", f"gives the same cell as {a[k] if k else 'another entry'} "
                                                   f"after canonicalisation ({c.label()}); remove the duplicate")
        seen[c.cell_id] = c
    check_fit(cfg, cfg.models, cfg.calibration.languages, ev, (ev["ppl"]["split"],) if ev["ppl"] else ())
    return cells


def _is_zero(s: str) -> bool:
    try:
        return float(s) == 0
    except ValueError:
        return False


def _where_of(spec_field: str, where: dict[str, str], m: MethodEntry) -> str:
    """Map a PruneSpec field in an engine error to the sweep-file path of its value."""
    mapping = {"method": where["method"] + ".name", "hp": where["method"] + ".hp", "sparsity": where["sparsity"],
               "calib": where["calib"], "seed": where["seed"], "data": "calibration.data",
               "nsamples": "calibration.nsamples", "seqlen": "calibration.seqlen", "schedule": "schedule",
               "batch_size": "calibration.batch_size", "model": where["model"]}
    return mapping.get(spec_field, spec_field)


def _evaluation(cfg: SweepConfig) -> dict[str, Any]:
    """The resolved evaluation set (part of every cell id)."""
    from tasks.data.langs import parse_mix

    # default: perplexity in every language the sweep calibrates on
    langs = sorted({l for spec in cfg.calibration.languages for l in _mix_or_raise(parse_mix, spec)})
    return resolve_evaluation(cfg.evaluation, cfg.calibration, langs)


def _mix_or_raise(parse_mix, spec: str):
    try:
        return parse_mix(spec)
    except UserError as e:
        raise UserError("calibration.languages", e.message) from None
