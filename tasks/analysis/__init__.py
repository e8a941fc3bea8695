"""Analyses of pruning results that need no Ray, MLflow or Optuna (mask overlap)."""
