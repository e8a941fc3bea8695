"""polyprune's driver side: the CLI, sweeps and searches on Ray, the MLflow record, reports.

Packages by concern, imports pointing one way (cli -> sweep / search / report ->
tracking / config -> tasks):
- `cli`: the parser and one module per command;
- `sweep`: sweep files, cells, THE scheduler (Ray actors) and worker, the sweep's record;
- `search`: search files, spaces, the Optuna study, the ask-and-tell driver on the scheduler;
- `report`: report assembly, sections, figures, compare;
- `tracking`: MLflow helpers; `config`: what sweep and search files share.
"""
