"""The searched trials' stage: Optuna's ask-and-tell as the scheduler's source and events.

Each asked trial becomes a cell (`cells.trial_cell`) and a run tagged `polyprune.trial`; each result
is told (valid values; with `test_every_trial` the test pass is logged too, never told; else `held_out`
measures the reported trials' test split). `parallel` trials in flight.
Budget: the file's `n_trials` is the study's total; `--n-trials N` adds N more. Counted are COMPLETE,
FAIL and PRUNED trials, except lost ones (a killed driver: re-run from the same parameters up to
`resources.max_retries` times, `study.lose`). A trial whose worker dies is retried in place, as a
sweep's cell is; one that fails itself is told FAIL. With a `pruner:`, workers post each valid
language to the mailbox (`early_stop`) and a pruned trial stops there.

With `fidelity:` (search.fidelity) a trial has two rungs, each a cell and a run: its screen (kind
`screen`), reported to Optuna as the intermediate value at step 0; then, if the screen is among the
best `promote` fraction so far, its full-fidelity cell (kind `trial`, the cell an unscreened search
runs), told as the trial's values; else it is told PRUNED. A promoted cell goes before any new ask.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tasks.errors import UserError

from .. import tracking
from ..engine.cells import Cell
from ..names import BEAT, ERROR, LOST, RUNG, SCREEN_RUN
from ..stores import shown
from ..engine.record import log, retry_tags
from . import early_stop, fidelity
from .cells import trial_cell, varied
from .context import quiet
from .record import finite, trial_dict
from .study import DEFAULTS, best_trials, counted


@dataclass
class Flight:
    trial: Any  # optuna Trial (asked, not yet told)
    run_id: str
    full: Cell | None = None  # a screen's: the trial's full-fidelity cell, run if promoted


class Trials:
    """The stage (docs/extending.md); it is its own `Source` and `Events`."""

    def __init__(self, ctx, n_trials: int | None):
        self.ctx, self.n_trials = ctx, n_trials
        self.flights: dict[int, Flight] = {}  # id(cell) -> its trial
        self.told, self.todo, self.last_beat = 0, None, 0.0
        self.box = None  # the pruner's listener (early_stop)
        self.queue: deque = deque()  # promoted trials' full-fidelity cells (their flights started), taken first
        f = ctx.cfg.fidelity
        self.screen = f if f is not None and fidelity.served(ctx.cfg.method) else None

    def pending(self) -> bool:
        if self.todo is None:
            cfg, study = self.ctx.cfg, self.ctx.study
            before = counted(study)
            budget = cfg.n_trials if self.n_trials is None else before + self.n_trials
            self.todo = max(0, budget - before)
            log(f"search {cfg.name}: study in {shown(cfg.storage)}: {before} trials counted; running until {budget} "
                f"(space {self.ctx.space.name}, {cfg.parallel} in flight)")
            if self.screen:
                log(f"search {cfg.name}: trials screened on {self.screen.windows} valid windows per language from the dense "
                    f"model's cached statistics; the best {self.screen.promote:.0%} so far promoted to the exact prune")
            elif cfg.fidelity:
                log(f"search {cfg.name}: {cfg.method} is not served from cached statistics: every trial at full fidelity")
        return self.todo > 0

    def run(self):
        self.box = early_stop.open_mailbox(self.ctx.cfg, self.flights)
        return self, self

    def stop(self, status: str, why: str) -> None:
        for f in self.flights.values():  # nothing stays RUNNING, no trial is lost
            quiet(lambda f=f: tracking.fail_cell(self.ctx.rec.cl, f.run_id, why, status=status))
            quiet(lambda f=f: self.ctx.lose(f.trial, "the driver stopped while this trial ran"))
        self.flights.clear()

    def has_failures(self) -> bool:
        return False  # a failed trial is a result (told FAIL), not a failed search

    def finish(self, summary: dict[str, Any]) -> None:
        """The study's counts and its best trials (chosen on valid, quoted with their test numbers)."""
        from optuna.trial import TrialState

        quiet(lambda: early_stop.close(self.box))
        study, metrics = self.ctx.study, self.ctx.metrics
        trials = study.get_trials(deepcopy=False)
        best = best_trials(study, len(metrics))
        summary.update({"n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
                        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
                        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                        "best": [trial_dict(t) for t in sorted(best, key=lambda t: t.number)]})
        for t in summary["best"]:  # the test numbers, read back from the trial's run: the study never holds them
            t["test"] = self.ctx.rec.held_out(t["mlflow_run_id"]) if self.ctx.rec and t["mlflow_run_id"] else {}
        if self.screen and self.ctx.rec:
            summary["fidelity"] = {**self.screen.model_dump(), **self.ctx.rec.rungs()}

    # ------------------------------------------------------------ the scheduler's source

    def more(self) -> bool:
        if time.monotonic() - self.last_beat >= DEFAULTS["beat_s"]:  # once per scheduler turn: the heartbeat
            self.ctx.study.set_user_attr(BEAT, time.time())
            self.last_beat = time.monotonic()
        return bool(self.queue) or self.told + len(self.flights) < self.todo

    def take(self, model: str | None):
        if self.queue:  # a promoted trial first: its flight is already counted
            return self.queue.popleft()
        while self.told + len(self.flights) < self.todo and len(self.flights) < self.ctx.cfg.parallel:
            cell = self.ask()
            if cell is not None:
                return cell
        return None

    def close(self, why: str) -> list:
        raise RuntimeError(why)  # trials in flight are lost and re-enqueued on the way out

    def ask(self):
        """Ask a trial and make its cell; None when it failed before running (told FAIL, counted)."""
        from optuna.trial import TrialState

        ctx = self.ctx
        trial = ctx.study.ask(ctx.space.distributions(list(ctx.cfg.calibration.languages)))
        try:
            cell = trial_cell(ctx.cfg, ctx.space, trial, ctx.n_blocks, ctx.ev)
        except UserError as e:
            trial.set_user_attr(ERROR, f"{e}")
            ctx.study.tell(trial, state=TrialState.FAIL)
            self.told += 1
            log(f"FAILED   trial {trial.number}: {e}")
            return None
        k = cell.key
        trial.set_user_attr("calib", k["calib"])  # the canonical mix: what ran, whatever the parametrisation
        trial.set_user_attr("schedule", k["schedule"] if isinstance(k["schedule"], str) else [round(x, 6) for x in k["schedule"]])
        trial.set_user_attr("hp", k["hp"])
        trial.set_user_attr("cell_id", cell.cell_id)
        if self.screen:
            full, cell = cell, varied(cell, **fidelity.screen_key(cell.key, self.screen.windows))
            trial.set_user_attr(RUNG, fidelity.SCREEN)
            run_id = ctx.rec.start_trial(trial.number, cell, trial.params, fidelity.SCREEN)
            trial.set_user_attr(SCREEN_RUN, run_id)
            self.flights[id(cell)] = Flight(trial, run_id, full)
            return cell
        run_id = ctx.rec.start_trial(trial.number, cell, trial.params)
        trial.set_user_attr("mlflow_run_id", run_id)
        self.flights[id(cell)] = Flight(trial, run_id)
        early_stop.attach(self.box, cell, trial.number)
        return cell

    # ------------------------------------------------------------ the scheduler's events

    def start(self, cell) -> None:
        pass  # the trial's run was created when it was asked

    def retry(self, cell, error: str, attempt: int) -> None:
        f = self.flights[id(cell)]
        tracking.log_tags(self.ctx.rec.cl, f.run_id, retry_tags(error, attempt))
        log(f"RETRY    trial {f.trial.number}: worker lost ({error}); attempt {attempt + 1}")

    def done(self, cell, out: dict[str, Any]) -> None:
        if "pruned" in out:
            return early_stop.pruned(self, cell, out)
        ctx, m = self.ctx, out["metrics"]
        f = self.flights[id(cell)]
        bad = [k for k in ctx.metrics + [c.metric for c in ctx.cfg.constraints] if not finite(m.get(k))]
        if bad:  # NaN / inf perplexity of a broken model: FAIL with the reason, not a number
            tracking.log_metrics(ctx.rec.cl, f.run_id, m)
            self.failed(cell, f"objective {bad[0]} is {m.get(bad[0])!r} (missing or not finite)", "", out.get("tags", {}))
            return
        del self.flights[id(cell)]
        for c in ctx.cfg.constraints:  # Optuna: feasible when every constraint value <= 0
            v = max((m[c.metric] - c.max) if c.max is not None else -math.inf,
                    (c.min - m[c.metric]) if c.min is not None else -math.inf)
            f.trial.set_constraint(c.metric, v)
        problem = tracking.finish_cell(ctx.rec.cl, f.run_id, out)
        if problem:  # the worker's files did not all arrive: the run ended FAILED, so does the trial
            self.tell_failed(f, problem)
            return
        if f.full is not None:
            return self.screened(f, m)
        values = [float(m[k]) for k in ctx.metrics]
        ctx.study.tell(f.trial, values)
        self.told += 1
        shown = " ".join(f"{k}={v:.4g}" for k, v in zip(ctx.metrics, values))
        if self.screen:  # the best full-fidelity value so far: what the search would answer now
            shown += f" (full fidelity; best so far {ctx.study.best_value:.4g})"
        log(f"COMPLETE trial {f.trial.number}: {shown}  calib={cell.key['calib']} {m.get('time.cell_s', 0):.1f}s")

    def screened(self, f: Flight, m: dict[str, float]) -> None:
        """A screen's result: reported at step 0; the trial promoted (its full cell queued, its run started)
        or told PRUNED. Ranked against every screen the study holds, lost trials' aside (they run again)."""
        from optuna.trial import TrialState

        ctx, value = self.ctx, float(m[self.ctx.metrics[0]])
        f.trial.report(value, 0)
        mine = [t for t in ctx.study.get_trials(deepcopy=False) if t.user_attrs.get(RUNG) and LOST not in t.user_attrs]
        seen = [t.intermediate_values[0] for t in mine if 0 in t.intermediate_values]
        minimize = ctx.cfg.objectives[0].direction == "minimize"
        up = sum(t.user_attrs[RUNG] == fidelity.FULL for t in mine)
        rank = f"{ctx.metrics[0]}={value:.4g} on {self.screen.windows} windows ({len(seen)} screened, {up} promoted before)"
        if not fidelity.promoted(value, seen, self.screen.promote, minimize):
            ctx.study.tell(f.trial, state=TrialState.PRUNED)
            self.told += 1
            log(f"SCREENED trial {f.trial.number}: {rank}: not promoted")
            return
        f.trial.set_user_attr(RUNG, fidelity.FULL)
        run_id = ctx.rec.start_trial(f.trial.number, f.full, f.trial.params, fidelity.FULL)
        f.trial.set_user_attr("mlflow_run_id", run_id)
        self.flights[id(f.full)] = Flight(f.trial, run_id)
        self.queue.append(f.full)
        log(f"PROMOTED trial {f.trial.number}: {rank}: to the exact prune on every valid window")

    def failed(self, cell, error: str, detail: str, tags: dict[str, str]) -> None:
        f = self.flights.pop(id(cell))
        tracking.fail_cell(self.ctx.rec.cl, f.run_id, error, detail, "FAILED", tags)
        self.tell_failed(f, error)

    def tell_failed(self, f, error: str) -> None:
        from optuna.trial import TrialState

        f.trial.set_user_attr(ERROR, error[:1000])
        self.ctx.study.tell(f.trial, state=TrialState.FAIL)
        self.told += 1
        log(f"FAILED   trial {f.trial.number}: {error}")
