"""Searches: Optuna's ask-and-tell over calibration mixes, M-Wanda coefficients and layerwise schedules,
as a list of stages the engine's lifecycle drives (`driver.stage_list`; docs/extending.md, "A search stage").

- `driver`: `run_search`, THE list of stages, `SearchJob` (the search as a lifecycle `Job`);
- `context`: what every stage shares (file, space, study, record, finished runs);
- the stages: `baselines` (the literature's baselines, and the method alone), `trials` (the searched
  trials), `selection` and `test_seeds` (the confirmation's two phases; `reruns`: what they share),
  `held_out` (the test split of the trials the search reports);
- `cells`: THE trial -> cell function, a baseline's cell, a cell on another seed;
- `file` (the search file), `study` (open, take over, lose and re-enqueue, budget), `sampling`
  (`sampler:` and `pruner:`), `early_stop` (the pruner's mailbox), `confirm` (the confirmation's rules)
  and `verdict_stats` (Holm, the bootstrap), `record` (the parent run).
Only what is specific to searching lives here; the spaces and their loader are `search_spaces`
(declarative files beside their loader; docs/design.md, "The layers").
"""
