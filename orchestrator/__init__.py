"""polyprune's driver side: CLI, sweeps on Ray, Optuna searches, the MLflow record, reports."""
