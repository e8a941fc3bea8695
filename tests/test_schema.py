"""A new sqlite MLflow store copied from the cached template (orchestrator/schema.py) reads, to MLflow,
like one MLflow migrated itself: same tables, same schema version, same experiments with the same
Default artifact location, and runs log and read back the same."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from orchestrator import schema, tracking


def schema_of(db: Path) -> tuple[list, list]:
    """Tables and indexes, each definition's clauses as a set: MLflow's migrations rebuild some tables with
    their CHECK constraints in an order that differs from one migration to the next (Python's set order)."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        tables = sorted((kind, name, sorted(re.split(r",\s*\n", sql or ""))) for kind, name, sql in rows)
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
    con.close()
    return tables, version


def read(cl) -> dict:
    """What MLflow shows of a store, less the creation times."""
    exps = [(e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage) for e in cl.search_experiments()]
    exp = cl.create_experiment("x")
    run = cl.create_run(exp, run_name="r", tags={"k": "v"})
    cl.log_param(run.info.run_id, "p", "1")
    cl.log_metric(run.info.run_id, "ppl.mean", 9.5)
    cl.set_terminated(run.info.run_id, "FINISHED")
    got = cl.search_runs([exp])
    return {"experiments": exps, "new experiment id": exp, "default": cl.get_experiment("0").artifact_location,
            "runs": [(r.info.run_name, r.info.status, r.data.params, r.data.metrics, r.data.tags.get("k")) for r in got]}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow puts the Default experiment's artifacts under ./mlruns
    return tmp_path / "cache"


def test_a_store_from_the_template_reads_like_a_migrated_one(tmp_path, cache):
    from mlflow import MlflowClient

    fresh = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'fresh.db'}")
    first = tracking.client(f"sqlite:///{tmp_path / 'first.db'}", create=True)  # makes the template
    assert schema.template_path().exists() and schema.template_path().parent.parent == cache
    second = tracking.client(f"sqlite:///{tmp_path / 'second.db'}", create=True)  # copies it
    want = read(fresh)
    assert want["default"] == str(tmp_path / "mlruns" / "0")
    assert read(first) == want and read(second) == want
    assert schema_of(tmp_path / "second.db") == schema_of(tmp_path / "fresh.db")
    assert not list(tmp_path.glob(".*.tmp")), "a copy's temporary file left behind"


def test_the_template_is_keyed_by_mlflows_version(cache):
    from importlib.metadata import version

    assert version("mlflow") in schema.template_path().name


def test_no_usable_cache_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path / "file"))
    assert not schema.seed(tmp_path / "a.db") and not (tmp_path / "a.db").exists()
    cl = tracking.client(f"sqlite:///{tmp_path / 'b.db'}", create=True)
    assert [e.name for e in cl.search_experiments()] == ["Default"]
