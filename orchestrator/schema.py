"""A new sqlite MLflow store, copied from a template instead of migrated.

MLflow builds a new store's schema by running every migration since its first release (~4 s on a
2-core machine, at each new store: each sweep, search and demo). A migrated, empty store is made
once per MLflow version under polyprune's cache (POLYPRUNE_CACHE, else ~/.cache/polyprune:
`mlflow-schema/`), and a new store is a copy of it (milliseconds).

The template holds the schema without MLflow's Default experiment (id 0): MLflow adds that
experiment itself when it first opens the copy, with the artifact location (`./mlruns/0` from the
working folder) and creation time it gives a store it creates, so the copy reads like a fresh store.
Whatever fails here (a read-only cache, an MLflow that no longer adds Default) leaves the store to
MLflow's own migrations, as before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from tasks.data.builtin import cache_root

FORMAT = 1  # of the template itself: a change to how it is made here bumps it


def template_path() -> Path:
    from importlib.metadata import version

    return cache_root() / "mlflow-schema" / f"mlflow-{version('mlflow')}-{FORMAT}.db"


def seed(path: Path) -> bool:
    """Put a copy of the template at `path` (a sqlite store that does not exist yet; the caller holds
    its folder's creation lock), making the template first if there is none. False when it cannot:
    MLflow then creates the schema itself."""
    try:
        template = template_path()
        if not template.exists():
            make_template(template)
        copy = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(template, copy)
            os.replace(copy, path)  # the store appears whole or not at all
        finally:
            copy.unlink(missing_ok=True)
        return True
    except (OSError, sqlite3.Error, ImportError):
        return False


def make_template(template: Path) -> None:
    """Migrate an empty store with MLflow, drop its Default experiment, check that MLflow opens a copy
    and adds Default back, then move it into place (concurrent makers: the last one's stays, all equal)."""
    from mlflow import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="schema-", dir=template.parent) as tmp:
        db = Path(tmp) / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # every migration, then Default
        with sqlite3.connect(db) as con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        con.close()
        with sqlite3.connect(db) as con:
            con.execute("VACUUM")
        con.close()
        probe = Path(tmp) / "probe.db"
        shutil.copyfile(db, probe)
        if MlflowClient(tracking_uri=f"sqlite:///{probe}").get_experiment_by_name("Default") is None:
            raise OSError("MLflow did not add the Default experiment to a copy of the template")
        os.replace(db, template)
