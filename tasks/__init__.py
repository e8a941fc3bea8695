"""polyprune work units: models, calibration data, pruning, evaluation.

Nothing here imports Ray, MLflow or Optuna: every function takes and returns
plain Python / torch objects, so a cell runs the same in a Ray worker, a test
or a notebook.
"""
