"""Sweeps: a grid of cells run on Ray and recorded in MLflow.

- `file`: the sweep file (schema, paths, checks) and its expansion into cells;
- `cells`: `Cell`, the unit of work sweeps and searches share, and its id;
- `scheduler`: THE execution loop (Ray actors, retries, worker deaths), fed by a
  source of cells: a fixed list here, the study's ask side for searches;
- `worker`: `CellRunner`, the Ray actor that prunes and evaluates a cell (plain dicts in and out);
- `record`: the scheduler's events as MLflow child runs;
- `session`: Ray joined or started for a driver (SIGTERM taken as Ctrl-C);
- `lifecycle`: `drive`, THE driver lifecycle of sweeps and searches (start-up, store, lease,
  parent run, stages through the loop, one interrupt path);
- `driver`: `execute` (a sweep as a lifecycle `Job`, then its summary) and `dry_run`.
"""
