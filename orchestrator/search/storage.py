"""A search's Optuna storage on a database server, riding out the server's brief outages.

Optuna's RDBStorage raises `StorageInternalError` at the first call that finds its connection
gone (a server restarted, stopped, failing over), which would end a search of hours. `Riding`
wraps it: each storage call that fails on a lost connection is retried with backoff for up to
POLYPRUNE_STORE_RETRY_S (default 120 s; `stores.Outage`), then the search stops in one line
(`StoreDown`) and a rerun resumes it. The driver's calls (ask, tell, the heartbeat) block
meanwhile; the workers go on and their results wait in Ray.

A write is never made twice: a failed attempt may have reached the database before the connection
dropped, so before retrying a write that is not an overwrite the wrapper reads whether it landed.
That read is exact because one driver writes a study (the search's lease): the state of a trial
being told (a tell that landed is not told again), the trial number a create gives (numbers run
0, 1, 2, ... per study), a parameter already set. User and system attributes and intermediate
values are overwritten by a retry, which is harmless.
"""

from __future__ import annotations

import abc
from typing import Any

from optuna.storages import BaseStorage, RDBStorage

from ..stores import DB_PORTS, Outage, scheme_of

# Connecting to a server that does not answer fails in this many seconds, not after the OS's minutes.
CONNECT_TIMEOUT_S = 10


def open_storage(url: str):
    """Optuna's RDBStorage on `url`; on a database server, wrapped to ride out its outages."""
    if scheme_of(url) not in DB_PORTS:  # sqlite: a file, no server to lose
        return RDBStorage(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a pooled connection the restart broke is replaced, not used
    if scheme_of(url) == "postgresql":  # libpq's parameter, in psycopg and psycopg2 alike
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return Riding(RDBStorage(url, engine_kwargs=kwargs), url)


def passed_through(cls):
    """Give `cls` every public method of Optuna's BaseStorage it does not define: the inner
    storage's, called through the outage (reads, and writes that overwrite)."""
    def through(name):
        def method(self, *args, **kw):
            return self.outage.call(getattr(self.inner, name), *args, **kw)

        method.__name__ = name
        return method

    for name in dir(BaseStorage):
        if not name.startswith("_") and callable(getattr(BaseStorage, name)) and name not in cls.__dict__:
            setattr(cls, name, through(name))
    abc.update_abstractmethods(cls)
    return cls


@passed_through
class Riding(BaseStorage):
    """An Optuna storage (`inner`, an RDBStorage) whose calls ride out its server's outages."""

    def __init__(self, inner, url: str):
        self.inner, self.outage = inner, Outage("storage", url)
        self.numbers: dict[int, int] = {}  # study id -> the number its next trial gets

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        if study_id not in self.numbers:  # once per study and driver; then counted here
            self.numbers[study_id] = self.outage.call(self.inner.get_n_trials, study_id)
        number = self.numbers[study_id]

        def landed():
            try:
                return True, self.inner.get_trial_id_from_study_id_trial_number(study_id, number)
            except KeyError:
                return False, None

        trial_id = self.outage.call(self.inner.create_new_trial, study_id, template_trial, landed=landed)
        self.numbers[study_id] = number + 1
        return trial_id

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        """A tell (or a waiting trial taken to run): done already when the trial is in `state`."""
        def landed():
            return (True, True) if self.inner.get_trial(trial_id).state == state else (False, None)

        return self.outage.call(self.inner.set_trial_state_values, trial_id, state, values, landed=landed)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution) -> None:
        def landed():
            return (True, None) if param_name in self.inner.get_trial(trial_id).params else (False, None)

        return self.outage.call(self.inner.set_trial_param, trial_id, param_name, param_value_internal, distribution,
                                landed=landed)
