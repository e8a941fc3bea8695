"""Evaluation of (pruned) models: per-language perplexity and lm-eval downstream tasks.

`lmeval.run_lmeval` runs lm-eval on the in-memory model; `offline_tasks` generates
polyprune's own offline lm-eval tasks from the built-in corpus's held-out text.
"""
