"""The Optuna study of a search: open (create or resume), take over from a stopped driver,
lose and re-enqueue a trial, count the budget, name its best trials.

Only Optuna's public API is used: `Study`, `FrozenTrial` / `Trial` properties and, for the
one thing `Study` cannot do (tag a trial known only by its number), the storage API in
`tag_trial`. So `open_study` returns the storage object it built next to the study.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from tasks.errors import UserError

from ..names import ATTEMPT, BASELINE, BEAT, DRIVER, LOST, OVERRIDE, RETRY_OF
from ..stores import DB_PORTS, StoreDown, check_database, check_durable, creating, scheme_of, shown
from ..lease import DEFAULTS as LEASE_DEFAULTS
from .sampling import build_pruner, build_sampler, metric_names

# The driver's heartbeat on the study (a user attr, shown to people; the lease decides): the lease's period.
DEFAULTS = {"beat_s": LEASE_DEFAULTS["beat_s"]}


def check_storage(uri: str) -> None:
    """Before anything is created: a storage Optuna can open, a journal or sqlite file in a folder
    that exists and outlives a Ray job, or a database server that answers with its driver installed."""
    if uri.startswith(("journal:///", "sqlite:///")):
        path = Path(uri[len("journal:///") - 1:] if uri.startswith("journal:///") else uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise UserError("storage", f"folder of {uri!r} does not exist")
        check_durable(str(path), "storage")
        return
    if scheme_of(uri) not in DB_PORTS:
        raise UserError("storage", f"cannot use {uri!r}: give sqlite:///FILE, journal:///FILE or postgresql://... "
                                   f"(mysql://..., with its driver installed)")
    check_database(uri, "storage")


def open_study(cfg):
    """(study, storage) named after the search: created, or resumed with its directions checked."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage: Any = cfg.storage
    check_storage(storage)
    if storage.startswith("journal:///"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage[len("journal:///") - 1:])
        if not path.parent.is_dir():
            raise UserError("storage", f"folder of {storage!r} does not exist")
        storage = JournalStorage(JournalFileBackend(str(path)))
    directions = [o.direction for o in cfg.objectives]
    sqlite = Path(cfg.storage[len("sqlite:///"):]) if cfg.storage.startswith("sqlite:///") else None
    try:
        with creating(sqlite):  # the schema and the study: one creator at a time
            if isinstance(storage, str):  # one engine for both opens below; a server's outage ridden out
                from .storage import open_storage

                storage = open_storage(storage)
            study = optuna.create_study(study_name=cfg.name, storage=storage, directions=directions,
                                        sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError("storage", f"cannot open {cfg.storage!r}: {e}") from None
    # The sampler's seed moves on with the study: a resumed study with a fixed seed would
    # otherwise replay the first run's start-up proposals.
    seed = None if cfg.sampler_seed is None else cfg.sampler_seed + len(study.get_trials(deepcopy=False))
    study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=build_sampler(cfg.sampler, seed),
                              pruner=build_pruner(cfg.pruner))
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError("objectives", f"study {cfg.name!r} in {shown(cfg.storage)} was created with directions "
                                      f"{[d.name.lower() for d in study.directions]}; a search's objectives cannot change (rename it)")
    # optuna-dashboard, `polyprune dashboard` and Optuna's plots label the values with these, not "Objective 0".
    if study.metric_names != metric_names(cfg):
        with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2: a note for no user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(cfg))
    return study, storage


def tag_trial(study, storage, number: int, key: str, value: Any) -> None:
    """A user attribute on trial `number` of `study`: Optuna's `Study` has no public way to
    reach a trial it did not just ask (one a dead driver left RUNNING), its storage has."""
    storage.set_trial_user_attr(trial_id(study, storage, number), key, value)


def trial_id(study, storage, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def take_over(study, storage, max_retries: int, recorded=None) -> int:
    """Become the study's driver (the caller holds the search's lease, `orchestrator.lease`, so
    any earlier driver is gone): fail the trials it left RUNNING (marked lost, re-enqueued).
    A trial whose result reached its MLflow run though not the study (`recorded(trial)`: its
    values and constraints, see `recorded_result`) is told that result instead. Returns how many were lost."""
    from optuna.trial import Trial, TrialState

    study.set_user_attr(DRIVER, f"{socket.gethostname()}:{os.getpid()}")
    study.set_user_attr(BEAT, time.time())
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    lost = 0
    for t in stale:
        got = recorded(t) if recorded is not None else None
        if got is None:
            lose(study, storage, t, "the driver stopped while this trial ran (found RUNNING on resume)", max_retries)
            lost += 1
            continue
        values, constraints = got
        trial = Trial(study, trial_id(study, storage, t.number))
        for key, value in constraints.items():
            if key not in t.constraints:  # set before the tell that did not arrive
                trial.set_constraint(key, value)
        study.tell(t.number, values)
    return lost


def recorded_result(cl, cfg):
    """For `take_over`: (values, constraints) of a trial whose MLflow run FINISHED with its objectives
    while the study never heard it (its tell met the storage away past POLYPRUNE_STORE_RETRY_S, after
    the run was recorded); None for any other trial. So a rerun tells that result, not runs it again."""
    import math

    from ..names import PRUNED

    def read(trial):
        run_id = trial.user_attrs.get("mlflow_run_id")
        run = cl.get_run(run_id) if run_id else None
        if run is None or run.info.status != "FINISHED" or PRUNED in run.data.tags:
            return None
        m = run.data.metrics
        if any(k not in m for k in [o.metric for o in cfg.objectives] + [c.metric for c in cfg.constraints]):
            return None
        # as the driver sets them when the result arrives (search/driver.py): feasible when <= 0
        constraints = {c.metric: max((m[c.metric] - c.max) if c.max is not None else -math.inf,
                                     (c.min - m[c.metric]) if c.min is not None else -math.inf) for c in cfg.constraints}
        return [float(m[o.metric]) for o in cfg.objectives], constraints

    return read


def lose(study, storage, trial, reason: str, max_retries: int) -> None:
    """FAIL a trial (a `Trial` or `FrozenTrial`) whose driver died, not by its own fault, and
    re-enqueue its parameters, so no trial is lost, at most `max_retries` times."""
    from optuna.trial import TrialState

    try:
        tag_trial(study, storage, trial.number, LOST, reason)
    except StoreDown:  # the storage is away past its limit (the driver stops saying so): the rerun loses the trial
        return
    study.tell(trial.number, state=TrialState.FAIL)
    attempt = int(trial.user_attrs.get(ATTEMPT, 0)) + 1
    if attempt <= max_retries:
        carry = {k: v for k, v in trial.user_attrs.items() if k in (OVERRIDE, BASELINE)}
        study.enqueue_trial(trial.params, user_attrs={**carry, ATTEMPT: attempt, RETRY_OF: trial.number})


def counted(study) -> int:
    """Trials that use the budget: COMPLETE, FAIL and PRUNED ones, except lost ones (re-run)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    return sum(1 for t in done if LOST not in t.user_attrs)


def best_trials(study, n_objectives: int) -> list:
    """The study's best trial(s) on valid (the Pareto front with several): what the trials' stage reports
    and the held-out stage measures on test."""
    from optuna.trial import TrialState

    try:
        if n_objectives > 1:
            return list(study.best_trials)
        return [study.best_trial] if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else []
    except ValueError:
        return []
