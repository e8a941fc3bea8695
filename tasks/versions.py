"""The libraries a result depends on, in one list: `polyprune --version` prints them, every run's
provenance tag (`polyprune.versions`) and every result.json record them, and so does the demo model's
training record. Read from the installed packages' metadata only: importing this module imports none
of them (not torch, so `--version` stays fast; not Ray, MLflow or Optuna, which tasks/ never imports)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

# Distribution names ("python": the interpreter), in the order `--version` prints them.
LIBRARIES = ("polyprune", "python", "torch", "transformers", "datasets", "lm_eval", "ray", "mlflow", "optuna")


def version_of(name: str) -> str | None:
    """The installed version of `name` (one of LIBRARIES, or any distribution), None when absent."""
    if name == "python":
        return platform.python_version()
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """{name: version} of every library in LIBRARIES that is installed."""
    return {name: v for name in LIBRARIES if (v := version_of(name)) is not None}
