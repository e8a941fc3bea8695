"""polyprune's driver side: the CLI, sweeps and searches on Ray, the MLflow record, reports.

Packages by concern, imports pointing one way (cli -> sweep / search / report -> engine ->
tracking / config -> tasks):
- `cli`: the parser and one module per command;
- `engine`: what runs cells for sweeps and searches: cells, THE scheduler (Ray actors) and worker,
  the record of a cell, the Ray session, the driver lifecycle;
- `sweep`: sweep files and their cells, the sweep driver;
- `search`: search files, spaces, the Optuna study, the ask-and-tell driver on the engine;
- `report`: report assembly, sections, figures, compare;
- `tracking`: MLflow helpers; `provenance`: the code's commit and the library versions every run carries;
  `config`: what sweep and search files share.
"""
