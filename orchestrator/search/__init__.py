"""Searches: Optuna's ask-and-tell over calibration mixes, M-Wanda coefficients and
layerwise schedules, trials run by the sweeps' scheduler (`orchestrator.sweep.scheduler`).

- `file`: the search file (schema, paths, checks);
- `study`: the Optuna study: open, take over from a stopped driver, lose and re-enqueue,
  the budget;
- `baselines`: the file's `baselines:` (uniform, target, named mixes, MBS) checked and enqueued;
- `driver`: `run_search` and `Search`, the study as a lifecycle `Job` (`sweep.lifecycle`) and as
  the scheduler's source and events;
- `record`: the search's MLflow parent run (best trials on valid with their test numbers, Optuna figures).
Only what is specific to Optuna lives here; the spaces and their loader are `search_spaces`
(declarative files beside their loader; docs/design.md, "The layers").
"""
