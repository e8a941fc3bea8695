"""A cell: one unit of work for a worker, the same for sweeps and searches.

A cell is everything that determines one result: the canonical prune spec plus
the evaluation set. Its id is a hash of that dict, so it is the same on every
machine and every rerun, and changes whenever the result could change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(eq=False)  # identity: two trials of one search may ask for the same cell
class Cell:
    """One unit of work. `key` is what the id hashes; the rest only says how to run it."""

    kind: str  # "prune" | "baseline" (the dense model, sparsity 0)
    key: dict[str, Any]
    run: dict[str, Any]  # batch sizes, trust_remote_code: do not change the result
    where: dict[str, str] = field(default_factory=dict)  # file paths of the values, for messages
    cell_id: str = ""

    def __post_init__(self):
        self.cell_id = cell_id(self.key)

    @property
    def model(self) -> str:
        return self.key["model"]

    def label(self) -> str:
        k = self.key
        if self.kind == "baseline":
            return f"{Path(k['model']).name} dense"
        return f"{Path(k['model']).name} {k['method']} {k['sparsity']} {k['calib']} seed={k['seed']}"

    def task(self, delay_s: float = 0.0) -> dict[str, Any]:
        """The plain dict a worker runs (`worker.CellRunner.run`)."""
        return {"cell_id": self.cell_id, "kind": self.kind, "key": self.key, "run": self.run, "delay_s": delay_s}


def cell_id(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The fields of a prune cell's key that are `tasks.api.PruneSpec` fields (the rest of the spec says how to run it).
SPEC_KEYS = ("model", "method", "sparsity", "calib", "data", "nsamples", "seqlen", "seed", "schedule", "dtype")


def prune_spec(cfg, model: str, method: str, sparsity: str, calib: str, seed: int, schedule, hp: dict[str, Any]):
    """THE `tasks.api.PruneSpec` of a sweep's or search's file (unchecked): the file's calibration
    (data, nsamples, seqlen) plus what this cell varies."""
    from tasks.api import PruneSpec

    c = cfg.calibration
    return PruneSpec(model=model, method=method, sparsity=sparsity, calib=calib, data=c.data, nsamples=c.nsamples,
                     seqlen=c.seqlen, seed=seed, schedule=schedule, hp=dict(hp))


def spec_of(key: dict[str, Any], **how):
    """The `PruneSpec` a worker runs for a prune cell's key; `how`: batch_size, device, trust_remote_code."""
    from tasks.api import PruneSpec

    return PruneSpec(**{k: key[k] for k in SPEC_KEYS}, hp=dict(key["hp"]), **how)


def prune_cell(model: str, spec, dtype: str, ev: dict[str, Any], run: dict[str, Any], where: dict | None = None) -> Cell:
    """The cell of a checked `tasks.api.PruneSpec` on `model`, evaluated with `ev`."""
    key = {"kind": "prune", "model": model, "method": spec.method, "sparsity": spec.sparsity, "calib": spec.calib,
           "data": spec.data, "nsamples": spec.nsamples, "seqlen": spec.seqlen, "seed": spec.seed,
           "schedule": spec.schedule, "hp": spec.hp, "dtype": dtype, "eval": ev}
    return Cell("prune", key, run, where or {})


def baseline_cell(model: str, dtype: str, ev: dict[str, Any], run: dict[str, Any], where: dict | None = None) -> Cell:
    return Cell("baseline", {"kind": "baseline", "model": model, "dtype": dtype, "eval": ev}, run, where or {})
