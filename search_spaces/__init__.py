"""Optuna search spaces shipped with polyprune: one YAML file per space (see orchestrator/search_space.py)."""
