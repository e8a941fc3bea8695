"""The engine: what runs cells for sweeps and searches alike (a sweep's grid and a search's
trials are both fed through it).

- `cells`: `Cell`, the unit of work sweeps and searches share, and its id;
- `scheduler`: THE execution loop (Ray actors, retries, worker deaths), fed by a
  source of cells: a sweep's fixed list, a search's ask side;
- `worker`: `CellRunner`, the Ray actor that prunes and evaluates a cell (plain dicts in and out);
- `system`: a cell's system metrics, sampled on its worker;
- `record`: the scheduler's events as MLflow child runs;
- `session`: `RaySession`, Ray for one command, opened by the CLI and passed down (SIGTERM taken as Ctrl-C);
- `lifecycle`: `drive`, THE driver lifecycle of sweeps and searches (start-up, store, lease,
  parent run, stages through the loop, one interrupt path).
`sweep/` and `search/` each say what their kind is and hand it to `lifecycle.drive`; they never
import each other.
"""
