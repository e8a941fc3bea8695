"""Optuna search spaces shipped with polyprune: one YAML file per space, and their loader (`space`:
what a file may hold, what a sampled point means for the engine)."""
