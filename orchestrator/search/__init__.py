"""Searches: Optuna's ask-and-tell over calibration mixes, M-Wanda coefficients and
layerwise schedules, trials run by the sweeps' scheduler (`orchestrator.sweep.scheduler`).

- `file`: the search file (schema, paths, checks);
- `space`: search spaces as data (`search_spaces/*.yaml`) and what a sampled point means;
  a new space is a new YAML file, a new kind of parameter goes here;
- `study`: the Optuna study: open, take over from a stopped driver, lose and re-enqueue,
  the budget, the baselines;
- `driver`: `run_search` and `Search`, the study as the scheduler's source and events;
- `record`: the search's MLflow parent run (best trials, Optuna figures).
Only what is specific to Optuna lives here.
"""
