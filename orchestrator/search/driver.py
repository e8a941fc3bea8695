"""A search's run: Optuna's ask-and-tell around the sweeps' scheduler.

Order of work: validate the file, its space and one representative trial (nothing
is created on a bad file) -> `sweep.lifecycle.drive` (start-up, store, lease, parent
run, interrupt, final status) with `Search` as its job: under the lease, open the study
(named after `name`; created or resumed) and take it over (trials a dead driver left
RUNNING are failed, marked lost and re-enqueued), enqueue the baselines on a new study;
the trials' stage, `parallel` in flight: `Search` is the scheduler's source of cells (each
asked trial a cell) and its events (each result told); on a stop, trials in flight are lost
and re-enqueued -> the confirmation stage (`confirming.Confirmed`) -> best trials and
figures on the parent run -> the (confirmed) best trial registered (`register:`).

Budget: the file's `n_trials` is the study's total; `--n-trials N` adds N more. Counted are COMPLETE and FAIL trials,
except lost ones (killed driver), re-run from the same parameters up to `resources.max_retries` times. A trial whose
worker dies is retried in place, as a sweep's cell is (same trial and run, up to `max_retries`); one that fails itself is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError

from .. import models, tracking
from ..engine.lifecycle import Job, drive
from ..engine.record import log, retry_tags
from ..names import BASELINE, BASELINES_DONE, BEAT, DRIVER, ERROR, OVERRIDE, STUDY
from ..stores import shown
from .record import SearchRecord, finite, trial_dict
from . import baselines, fidelity
from .study import DEFAULTS, check_storage, counted, lose, open_study, recorded_result, take_over


def run_search(config, n_trials: int | None = None, storage: str | None = None, ray_address: str | None = None,
               tracking_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) the search in `config` (a search-file path, or its contents as a dict
    whose relative paths are relative to the cwd). Returns
    {"study", "status", "n_complete", "n_failed", "best": [...], "baselines": [...]}, each trial
    as {"number", "values" (valid: what the sampler saw), "test" ({test.<metric>: value}: never told),
    "calib", "schedule", "hp", "params", "baseline"}. Best trials are chosen on valid."""
    from ..config import resolve_tracking_uri
    from .file import load_search, parse_search, resolve_storage

    if isinstance(config, dict):  # built in code (e.g. by `polyprune demo`): paths relative to the cwd
        import yaml

        cfg, space = parse_search(config, Path.cwd())
        source, file = yaml.safe_dump(config, sort_keys=False).encode(), ""
    else:
        cfg, space = load_search(config)
        source, file = Path(config).read_bytes(), str(Path(config).resolve())  # named in the experiment's description
    if cfg.register_as:
        models.check_registered_name(cfg.register_as, "register")
    if n_trials is not None and n_trials <= 0:
        raise UserError("n-trials", f"must be a positive integer, got {n_trials}")
    if storage:
        cfg.storage = resolve_storage(storage, Path.cwd())
    if tracking_uri:
        cfg.tracking_uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    tracking.check_uri(cfg.tracking_uri)  # the record's store first (as a sweep), then the study's
    check_storage(cfg.storage)
    from .confirming import Confirmed  # the trials, then their confirmation over seeds (confirm:)
    search = (Confirmed if cfg.confirm else Search)(cfg, space, source, file, n_trials)
    status = drive(search, ray_address).status
    summary = {**search.result, "tracking_uri": cfg.tracking_uri}
    if status == "FINISHED" and cfg.register_as:  # a normal end only: an interrupted study's best is not its best
        summary["registered"] = search.rec.register(cfg.register_as, summary, cfg.objectives[0])
        print(summary["registered"], flush=True)
    return summary


def trial_resources(cfg):
    """The file's resources; cpu_workers defaults to one CPU worker per trial in flight."""
    from ..config import ResourcesConfig

    res = cfg.resources
    if "cpu_workers" not in res.model_fields_set:
        res = ResourcesConfig(**{**res.model_dump(), "cpu_workers": cfg.parallel})
    return res


@dataclass
class Flight:
    trial: Any  # optuna Trial (asked, not yet told)
    run_id: str
    baseline: str | None


class Search(Job):
    """A search for `lifecycle.drive`; its trials' stage: the study's ask side as the scheduler's `Source`
    of cells, its tell side as the `Events` (`confirming.Confirmed` adds the confirmation stage)."""

    kind = "search"

    def __init__(self, cfg, space, source: bytes, file: str, n_trials: int | None):
        from tasks.pruning.sparsity import parse_sparsity

        from .file import trial_evaluation

        self.cfg, self.space, self.source, self.file, self.n_trials = cfg, space, source, file, n_trials
        self.name, self.tracking_uri, self.resources = cfg.name, cfg.tracking_uri, trial_resources(cfg)
        self.ev = trial_evaluation(cfg)
        self.langs = list(cfg.calibration.languages)
        self.target = parse_sparsity(cfg.sparsity).fraction
        self.n_blocks = n_blocks(cfg) if space.profile_points else None
        self.metrics = [o.metric for o in cfg.objectives]
        self.flights: dict[int, Flight] = {}  # id(cell) -> its trial
        self.told, self.todo, self.last_beat = 0, 0, 0.0
        self.study = self.storage = self.rec = self.box = None  # box: the pruner's listener (search.fidelity)
        self.result: dict[str, Any] = {}

    # ------------------------------------------------------------ the lifecycle's hooks

    def open(self, rec) -> bool:
        """Under the search's lease: open the study, take it over, enqueue the baselines, set the budget."""
        from .file import target_language

        cfg = self.cfg
        self.study, self.storage = open_study(cfg)
        lost = take_over(self.study, self.storage, cfg.resources.max_retries, recorded_result(rec.cl, cfg))
        baselines.enqueue(self.study, cfg, self.space, baselines.resolve(cfg, target_language(cfg)),
                          BASELINES_DONE, BASELINE, OVERRIDE)
        before = counted(self.study)
        budget = cfg.n_trials if self.n_trials is None else before + self.n_trials
        self.todo = max(0, budget - before)
        log(f"search {cfg.name}: study in {shown(cfg.storage)}: {before} trials counted"
            + (f", {lost} left RUNNING by a stopped driver re-enqueued" if lost else "")
            + f"; running until {budget} (space {self.space.name}, {cfg.parallel} in flight)")
        return self.todo > 0

    def parent(self):
        cfg = self.cfg
        return {STUDY: cfg.name}, {
            "file": self.file, "model": cfg.model, "method": cfg.method, "sparsity": cfg.sparsity, "space": self.space.name,
            "calib_languages": ",".join(self.langs), "parallel": cfg.parallel, "storage": cfg.storage,
            "objectives": ",".join(f"{o.metric}:{o.direction}" for o in cfg.objectives)}, {
            "search.yaml": self.source, "space.yaml": Path(self.space.path).read_bytes()}

    def stages(self, rec):
        self.rec = SearchRecord(rec.cl, rec.exp, rec.parent, self.name, rec.tags)
        self.box = fidelity.open_mailbox(self.cfg, self.flights)
        if self.todo:
            yield self, self

    def stop(self, status: str, why: str) -> None:
        for f in self.flights.values():  # nothing stays RUNNING, no trial is lost
            quiet(lambda f=f: tracking.fail_cell(self.rec.cl, f.run_id, why, status=status))
            quiet(lambda f=f: lose(self.study, self.storage, f.trial, "the driver stopped while this trial ran",
                                   self.cfg.resources.max_retries))
        self.flights.clear()

    def end(self, status: str) -> None:
        self.result = self.summary(status)
        quiet(lambda: fidelity.close(self.box))
        quiet(lambda: self.rec.end(self.study, self.result, self.metrics))

    def release(self) -> None:
        if self.study is not None:
            self.study.set_user_attr(DRIVER, "")

    # ------------------------------------------------------------ the scheduler's source

    def more(self) -> bool:
        if time.monotonic() - self.last_beat >= DEFAULTS["beat_s"]:  # once per scheduler turn: the heartbeat
            self.study.set_user_attr(BEAT, time.time())
            self.last_beat = time.monotonic()
        return self.told + len(self.flights) < self.todo

    def take(self, model: str | None):
        while self.told + len(self.flights) < self.todo and len(self.flights) < self.cfg.parallel:
            cell = self.ask()
            if cell is not None:
                return cell
        return None

    def close(self, why: str) -> list:
        raise RuntimeError(why)  # trials in flight are lost and re-enqueued on the way out

    def ask(self):
        """Ask a trial and make its cell; None when it failed before running (told FAIL, counted)."""
        from optuna.trial import TrialState

        from search_spaces.space import sample

        trial = self.study.ask(self.space.distributions(self.langs))
        baseline = trial.user_attrs.get(BASELINE)
        try:
            point = sample(trial, self.space, self.langs, self.target, self.n_blocks)
            cell = self.cell(point, trial.user_attrs.get(OVERRIDE) or {})
        except UserError as e:
            trial.set_user_attr(ERROR, f"{e}")
            self.study.tell(trial, state=TrialState.FAIL)
            self.told += 1
            log(f"FAILED   trial {trial.number}: {e}")
            return None
        k = cell.key
        trial.set_user_attr("calib", k["calib"])  # the canonical mix: what ran, whatever the parametrisation
        trial.set_user_attr("schedule", k["schedule"] if isinstance(k["schedule"], str) else [round(x, 6) for x in k["schedule"]])
        trial.set_user_attr("hp", k["hp"])
        trial.set_user_attr("cell_id", cell.cell_id)
        run_id = self.rec.start_trial(trial.number, cell, trial.params, baseline)
        trial.set_user_attr("mlflow_run_id", run_id)
        self.flights[id(cell)] = Flight(trial, run_id, baseline)
        fidelity.attach(self.box, cell, trial.number)
        return cell

    def cell(self, point, override: dict[str, Any]):
        """The trial's cell (a sweep cell's key, so the worker runs it unchanged)."""
        from tasks.api import check_spec
        from tasks.data.langs import canonical_mix

        from ..config import run_options
        from ..engine.cells import prune_cell
        from .file import fixed_hp, trial_spec
        from search_spaces.space import PROFILE

        cfg = self.cfg
        mix = point.mix or {l: 1 / len(self.langs) for l in self.langs}
        calib = override.get("calib") or canonical_mix(mix)
        kind = override.get("schedule") or point.schedule or cfg.schedule
        schedule = point.profile if kind == PROFILE else kind
        hp = {**fixed_hp(cfg, self.space, kind), **point.hp, **override.get("hp", {})}
        spec = check_spec(trial_spec(cfg, calib, schedule, hp))
        return prune_cell(cfg.model, spec, cfg.dtype, self.ev, run_options(cfg))

    # ------------------------------------------------------------ the scheduler's events

    def start(self, cell) -> None:
        pass  # the trial's run was created when it was asked

    def retry(self, cell, error: str, attempt: int) -> None:
        f = self.flights[id(cell)]
        tracking.log_tags(self.rec.cl, f.run_id, retry_tags(error, attempt))
        log(f"RETRY    trial {f.trial.number}: worker lost ({error}); attempt {attempt + 1}")

    def done(self, cell, out: dict[str, Any]) -> None:
        if "pruned" in out:
            return fidelity.pruned(self, cell, out)
        m = out["metrics"]
        f = self.flights[id(cell)]
        bad = [k for k in self.metrics + [c.metric for c in self.cfg.constraints] if not finite(m.get(k))]
        if bad:  # NaN / inf perplexity of a broken model: FAIL with the reason, not a number
            tracking.log_metrics(self.rec.cl, f.run_id, m)
            self.failed(cell, f"objective {bad[0]} is {m.get(bad[0])!r} (missing or not finite)", "", out.get("tags", {}))
            return
        del self.flights[id(cell)]
        for c in self.cfg.constraints:  # Optuna: feasible when every constraint value <= 0
            v = max((m[c.metric] - c.max) if c.max is not None else -math.inf,
                    (c.min - m[c.metric]) if c.min is not None else -math.inf)
            f.trial.set_constraint(c.metric, v)
        problem = tracking.finish_cell(self.rec.cl, f.run_id, out)
        if problem:  # the worker's files did not all arrive: the run ended FAILED, so does the trial
            self.tell_failed(f, problem)
            return
        values = [float(m[k]) for k in self.metrics]
        self.study.tell(f.trial, values)
        self.told += 1
        shown = " ".join(f"{k}={v:.4g}" for k, v in zip(self.metrics, values))
        log(f"COMPLETE trial {f.trial.number}{f' ({f.baseline})' if f.baseline else ''}: {shown}  "
            f"calib={cell.key['calib']} {m.get('time.cell_s', 0):.1f}s")

    def failed(self, cell, error: str, detail: str, tags: dict[str, str]) -> None:
        f = self.flights.pop(id(cell))
        tracking.fail_cell(self.rec.cl, f.run_id, error, detail, "FAILED", tags)
        self.tell_failed(f, error)

    def tell_failed(self, f, error: str) -> None:
        from optuna.trial import TrialState

        f.trial.set_user_attr(ERROR, error[:1000])
        self.study.tell(f.trial, state=TrialState.FAIL)
        self.told += 1
        log(f"FAILED   trial {f.trial.number}: {error}")

    # ------------------------------------------------------------ results

    def summary(self, status: str) -> dict[str, Any]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        try:
            best = list(self.study.best_trials) if len(self.metrics) > 1 else ([self.study.best_trial] if complete else [])
        except ValueError:
            best = []
        base = [t for t in complete if BASELINE in t.user_attrs]
        out = {"study": self.cfg.name, "status": status, "storage": self.cfg.storage, "objectives": self.metrics,
               "n_complete": len(complete), "n_failed": sum(t.state == TrialState.FAIL for t in trials),
               "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
               "best": [trial_dict(t) for t in sorted(best, key=lambda t: t.number)],
               "baselines": [trial_dict(t) for t in base]}
        for t in out["best"] + out["baselines"]:  # chosen on valid; quoted on test, read back from the trial's run
            t["test"] = self.rec.held_out(t["mlflow_run_id"]) if self.rec and t["mlflow_run_id"] else {}
        return out


def n_blocks(cfg) -> int:
    """Decoder blocks of the model, from its config alone (the driver never loads weights)."""
    from tasks.models import n_blocks as blocks_of

    return blocks_of(cfg.model, cfg.trust_remote_code)


def quiet(fn) -> None:
    try:
        fn()
    except Exception as e:  # cleanup must go on
        log(f"cleanup: {type(e).__name__}: {e}")
