"""What every stage of a search shares (passed to each stage when the driver builds it): the file and
its space, what a trial evaluates, and, under the search's lease, the Optuna study, the search's
MLflow record and the FINISHED runs of its cells, listed once when the search opens."""

from __future__ import annotations

from typing import Any

from .. import tracking
from ..names import MODEL_ID, RUN_KIND, STUDY
from ..engine.record import Recorder, log
from ..stores import StoreDown
from .cells import full_evaluation, n_blocks, trial_evaluation
from .study import lose, open_study, recorded_result, take_over


class SearchContext:
    def __init__(self, cfg, space):
        self.cfg, self.space = cfg, space
        self.ev = trial_evaluation(cfg)  # a trial's: valid (what objectives read); test too with test_every_trial
        self.ev_full = full_evaluation(cfg)  # valid, then test: the baselines' and the confirmation's test seeds'
        self.metrics = [o.metric for o in cfg.objectives]
        self.n_blocks = n_blocks(cfg) if space.profile_points else None
        self.study = self.storage = self.rec = None  # the study (open); the search's record (`search.record`)
        self.done: dict[str, dict[str, dict]] = {}  # run kind -> cell_id -> a FINISHED run's (`results`)

    def open(self, rec) -> int:
        """Under the lease, before anything runs: the study opened and taken over (trials a stopped
        driver left RUNNING are lost and re-enqueued; how many), the FINISHED cell runs listed."""
        cfg = self.cfg
        self.study, self.storage = open_study(cfg)
        lost = take_over(self.study, self.storage, cfg.resources.max_retries, recorded_result(rec.cl, cfg))
        for cell_id, run in tracking.finished_cells(rec.cl, rec.exp, cfg.name).items():
            kind = run.data.tags.get(RUN_KIND, "")
            self.done.setdefault(kind, {})[cell_id] = {"run_id": run.info.run_id, "metrics": dict(run.data.metrics),
                                                       "model_id": run.data.tags.get(MODEL_ID)}
        return lost

    def results(self, kind: str) -> dict[str, dict]:
        """cell_id -> {"run_id", "metrics", "model_id"} of the FINISHED runs of this kind (listed, then each recorded)."""
        return self.done.setdefault(kind, {})

    def recorder(self, kind: str, labels: dict[str, tuple[dict, str]], total: int, before: int) -> Recorder:
        """The events of a stage of fixed cells: one run per cell, tagged `kind` and its label's tags,
        each FINISHED one added to `results(kind)`."""
        r = self.rec
        tags = {**r.tags, STUDY: self.cfg.name, RUN_KIND: kind}
        return Recorder(r.cl, r.exp, r.parent, self.cfg.name, tags, total, before, labels, self.results(kind))

    def lose(self, trial, why: str) -> None:
        lose(self.study, self.storage, trial, why, self.cfg.resources.max_retries)


def quiet(fn) -> Any:
    try:
        return fn()
    except StoreDown:  # a store away past its limit: the lifecycle says so in one line, not each clean-up step
        return None
    except Exception as e:  # cleanup must go on
        log(f"cleanup: {type(e).__name__}: {e}")
