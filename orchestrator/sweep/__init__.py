"""Sweeps: a grid of cells run on Ray (by `orchestrator.engine`) and recorded in MLflow.

- `file`: the sweep file (schema, paths, checks) and its expansion into cells;
- `driver`: `execute` (a sweep as a lifecycle `Job`, its cells a fixed list, then its summary) and `dry_run`.
"""
