"""Every name polyprune writes into the record: MLflow tags and Optuna user attributes.

One home, so a reader (status, report, register, the UI's search box) and a
writer can never disagree on a spelling. docs/record.md explains what each holds.

Two levels of MLflow tags live here: a run's (every name below, read as `run.data.tags`)
and an experiment's (only the `EXPERIMENT_*` names, read as `experiment.tags` or by
`search_experiments`). A reader that mixes them finds nothing (tests/test_tag_levels.py).
"""

# MLflow run tags: what a run is and where it belongs.
ROLE = "polyprune.role"  # "parent" on a sweep's or search's parent run
RUN_KIND = "polyprune.kind"  # a cell run's kind: cell, trial, screen, baseline, confirm, held-out
SWEEP = "polyprune.sweep"  # the sweep's (or search's) name, on every run of it
CELL = "polyprune.cell_id"  # the cell key: a resumed driver skips finished cells by it
TRIAL = "polyprune.trial"  # an Optuna trial number; present only on a search's trial runs
STUDY = "polyprune.study"
BASELINE = "polyprune.baseline"  # a named baseline's name (uniform, en-only, ...)
BEST_TRIALS = "polyprune.best_trials"  # on a search's parent: the Pareto-best trial numbers, comma-separated
# A search's confirmation runs (kind confirm): what is re-run (trial N or a baseline's name) and with which seed.
CONFIRM, CONFIRM_SEED = "polyprune.confirm", "polyprune.confirm_seed"
CONFIRMED = "polyprune.confirmed"  # on a search's parent: the confirmed winner's trial number
# A search's held-out runs (kind held-out): the trial number whose test split it measures (not TRIAL: that
# tag marks a trial's own run, which readers count and register from).
HELD_OUT = "polyprune.held_out"

# What happened to a run.
ERROR = "polyprune.error"
PRUNED = "polyprune.pruned"  # a search trial stopped by its pruner: the last step (evaluation language index) it ran
DRIVER = "polyprune.driver"  # host:pid of the driver that recorded it
RETRIES = "polyprune.retries"
LAST_WORKER_ERROR = "polyprune.last_worker_error"

# Where it ran.
PLACEMENT = "polyprune.placement"  # device (whole model) or blockwise
NODE, HOST, WORKER_PID = "polyprune.node", "polyprune.host", "polyprune.worker_pid"

# What it was made from.
MODEL_ID = "polyprune.model_id"  # a cell run's LoggedModel
BASE_MODEL = "polyprune.base_model"
MODEL_HASH = "polyprune.model_hash"
VERSIONS = "polyprune.versions"  # JSON of the key libraries' versions
GIT_DIRTY = "polyprune.git_dirty"

# On a registered model version: why it was registered.
METRIC, SPLIT, VALUE, TEST_VALUE = "polyprune.metric", "polyprune.split", "polyprune.value", "polyprune.test_value"

# The lease on a sweep or search: a registered model named so (see orchestrator/lease.py).
LEASE_PREFIX = "polyprune-lock."

# Optuna user attributes on a study or trial.
BEAT = "polyprune.beat"  # the driver's heartbeat, shown to people; the lease decides
LOST = "polyprune.lost"
ATTEMPT = "polyprune.attempt"
OVERRIDE = "polyprune.override"
RETRY_OF = "polyprune.retry_of"
OBJECTIVES = "polyprune.objectives"
STORAGE = "polyprune.storage"

# A screened search's rungs (search.fidelity): on a trial (user attribute) and its runs (tag): screen or full;
# the trial's screen run (a user attribute; `mlflow_run_id` is its full-fidelity run, when promoted).
RUNG = "polyprune.rung"
SCREENED = "polyprune.screened"  # a screen run's trial number (a screen is not the trial's result: no polyprune.trial)
SCREEN_RUN = "screen_run_id"

# A search's stages (docs/search.md): the phase of a confirmation run (selection or test), and the
# file of per-window losses every cell run logs (the verdict's bootstrap reads it).
CONFIRM_PHASE = "polyprune.confirm_phase"
LOSSES_FILE = "losses.json"

# MLflow's own run tag that polyprune sets.
PARENT = "mlflow.parentRunId"

# MLflow experiment tags (on the experiment, never on a run).
# MLflow 3 opens an experiment on its GenAI traces unless it is marked as model development.
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_NOTE = "mlflow.note.content"  # the experiment's description: polyprune's starts "polyprune sweep|search"
EXPERIMENT_TAGS = (EXPERIMENT_KIND, EXPERIMENT_NOTE)
