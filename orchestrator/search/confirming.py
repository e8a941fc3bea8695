"""A search's confirmation stage (docs/search.md, "Confirmation"): after the searched trials,
the `confirm.top` best trials on valid and every baseline are re-run with each confirmation
seed (a fresh calibration draw; the trial's mix, coefficients and schedule unchanged), through
the same scheduler, as runs of the search's experiment tagged `polyprune.confirm` /
`polyprune.confirm_seed`. They are not Optuna trials: the sampler never sees them.

A confirmation cell is the trial's own cell (rebuilt from its parameters by the driver's own
code) with another seed, so its id is stable: a resumed search re-runs only the confirmation
cells that have no FINISHED run. The winner and the verdicts (`confirm.verdict`) are computed
from the record at the end of every run of the search, logged on the parent run
(`confirmation.json`, `confirm.*` metrics, tag `polyprune.confirmed`) and returned in the
search's summary under `confirmation`.
"""

from __future__ import annotations

import json
from typing import Any

from .. import tracking
from ..names import CELL, CONFIRM, CONFIRM_SEED, CONFIRMED, OVERRIDE, RUN_KIND, STUDY, SWEEP
from ..engine.cells import Cell
from ..engine.record import Recorder, attach_model, log
from ..engine.scheduler import FixedCells
from .confirm import choose, verdict
from .driver import Search, quiet, trial_dict


class Confirmed(Search):
    """`Search` plus its confirmation stage, run once the trials' stage has run through."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.recorder: ConfirmRecorder | None = None

    def open(self, rec) -> bool:
        needed = super().open(rec)  # the trials' budget first; Ray is started when either has cells
        return needed or bool(self.todo_cells(rec.cl, rec.exp))

    def stages(self, rec):
        yield from super().stages(rec)
        todo = self.todo_cells(rec.cl, rec.exp)
        if todo:
            c = self.cfg.confirm
            log(f"search {self.name}: confirmation: {len(todo)} runs to go (top {c.top} trials and the baselines "
                f"x seeds {', '.join(map(str, c.seeds))})")
            tags = {cell.cell_id: {CONFIRM: label, CONFIRM_SEED: str(seed)} for label, seed, cell in todo}
            self.recorder = ConfirmRecorder(rec.cl, rec.exp, rec.parent, self.name, rec.tags, len(todo), 0, tags)
            yield FixedCells([cell for _, _, cell in todo]), self.recorder

    def stop(self, status: str, why: str) -> None:
        super().stop(status, why)
        if self.recorder is not None:
            self.recorder.end_inflight(status, why)

    def has_failures(self) -> bool:
        return super().has_failures() or bool(self.recorder and self.recorder.failures)

    def end(self, status: str) -> None:
        super().end(status)
        quiet(self.record_confirmation)

    # ------------------------------------------------------------ the plan

    def plan(self) -> tuple[list[dict], list[dict], list[tuple[str, int, Cell]]]:
        """(candidates, baselines, [(label, seed, cell)]) from the study as it stands."""
        from optuna.trial import TrialState

        c, sign = self.cfg.confirm, 1 if self.cfg.objectives[0].direction == "minimize" else -1
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        dicts = [{**trial_dict(t), "cell_id": t.user_attrs.get("cell_id")} for t in trials.values()]
        feasible = [d for d in dicts if all(v <= 0 for v in (trials[d["number"]].constraints or {}).values())]
        cands = [{**d, "label": f"trial {d['number']}"} for d in choose(feasible, c.top, sign)]
        bases: dict[str, dict] = {}
        for d in dicts:  # a baseline re-run after a lost driver completes once more: its first run stands
            if d["baseline"] and d["baseline"] not in bases:
                bases[d["baseline"]] = {**d, "label": d["baseline"]}
        cells = []
        for e in (cands + list(bases.values())) if cands else []:  # nothing searched: nothing to confirm
            cell = self.rebuild(trials[e["number"]])
            cells += [(e["label"], s, Cell("prune", {**cell.key, "seed": s}, cell.run, cell.where)) for s in c.seeds]
        return cands, list(bases.values()), cells

    def rebuild(self, trial) -> Cell:
        """The trial's cell, exactly as the driver made it when the trial was asked."""
        from optuna.trial import FixedTrial

        from search_spaces.space import sample

        point = sample(FixedTrial(trial.params, trial.number), self.space, self.langs, self.target, self.n_blocks)
        return self.cell(point, trial.user_attrs.get(OVERRIDE) or {})

    def finished(self, cl, exp) -> dict[str, Any]:
        """cell_id -> the FINISHED confirmation run of it."""
        return {k: r for k, r in tracking.finished_cells(cl, exp, self.name).items() if r.data.tags.get(RUN_KIND) == "confirm"}

    def todo_cells(self, cl, exp) -> list[tuple[str, int, Cell]]:
        """The confirmation cells without a FINISHED run, one per cell id."""
        done = set(self.finished(cl, exp))
        out = []
        for label, seed, cell in self.plan()[2]:
            if cell.cell_id not in done:
                done.add(cell.cell_id)
                out.append((label, seed, cell))
        return out

    # ------------------------------------------------------------ the result

    def record_confirmation(self) -> None:
        cl, parent, metric = self.rec.cl, self.rec.parent, self.metrics[0]
        runs = self.finished(cl, self.rec.exp)
        if not runs:
            return
        cands, bases, cells = self.plan()
        values = {(label, seed): runs[cell.cell_id].data.metrics for label, seed, cell in cells if cell.cell_id in runs}
        for e in cands + bases:
            got = {s: values[(e["label"], s)] for s in self.cfg.confirm.seeds if (e["label"], s) in values}
            e["valid"] = {s: m[metric] for s, m in got.items() if metric in m}
            e["test"] = {s: m[f"test.{metric}"] for s, m in got.items() if f"test.{metric}" in m}
            e["runs"] = sorted(runs[cell.cell_id].info.run_id for lab, _, cell in cells if lab == e["label"] and cell.cell_id in runs)
        c = verdict(cands, bases, metric, self.cfg.objectives[0].direction, list(self.cfg.confirm.seeds), self.cfg.confirm.level)
        self.result["confirmation"] = c
        if c["winner"] is not None:
            win = next(e for e in cands if e["label"] == c["winner"])
            c["winner_trial"] = {**win, "test": self.rec.held_out(win["mlflow_run_id"]) if win["mlflow_run_id"] else {}}
            tracking.log_tags(cl, parent, {CONFIRMED: str(win["number"])})
        tracking.log_artifacts(cl, parent, {"confirmation.json": (json.dumps(c, indent=2, default=str) + "\n").encode()})
        tracking.log_metrics(cl, parent, parent_metrics(c))


def parent_metrics(c: dict[str, Any]) -> dict[str, float]:
    """The confirmation's numbers on the parent run: the winner's and each baseline's test mean and
    sd over the seeds, and per baseline the winner's mean difference (%) and the test's p."""
    m = c["metric"]
    out: dict[str, float] = {}
    entries = [e for e in c["candidates"] if e["label"] == c["winner"]]
    for e, name in [(e, "winner") for e in entries] + [(b, b["label"]) for b in c["baselines"]]:
        if e.get("test_mean_sd"):
            out[f"confirm.{name}.test.{m}.mean"], out[f"confirm.{name}.test.{m}.sd"] = e["test_mean_sd"]
    if entries:
        out["confirm.winner.trial"] = entries[0]["number"]
    for v in c["vs"]:
        out[f"confirm.vs.{v['baseline']}.diff_pct"], out[f"confirm.vs.{v['baseline']}.p"] = v["diff"], v["p"]
    return out


class ConfirmRecorder(Recorder):
    """The sweep's recorder, with each run tagged as the confirmation of a trial or baseline at a seed."""

    def __init__(self, cl, exp, parent, name, tags, total, before, confirm_tags: dict[str, dict[str, str]]):
        super().__init__(cl, exp, parent, name, tags, total, before)
        self.confirm_tags = confirm_tags

    def start(self, cell) -> None:
        if cell.cell_id not in self.runs:  # a retried cell keeps its run and model
            t = self.confirm_tags[cell.cell_id]
            tags = {**self.tags, **t, STUDY: self.sweep, RUN_KIND: "confirm"}
            run_id = tracking.start_cell(self.cl, self.exp, self.parent, self.sweep, cell, tags,
                                         run_name=f"confirm {t[CONFIRM]} seed {t[CONFIRM_SEED]}")
            self.runs[cell.cell_id] = run_id
            attach_model(self.cl, self.exp, run_id, cell, {CELL: cell.cell_id, SWEEP: self.sweep, **t})
