"""Where a run came from: the git commit of the code (and whether it was modified) and the library
versions (tasks.versions), as the tags every run of a driver carries. Nothing here imports MLflow:
`polyprune --version` reads `git_state` too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .names import GIT_DIRTY, VERSIONS


def provenance() -> dict[str, str]:
    """Tags on every run: git commit of the code and library versions (tasks.versions.LIBRARIES)."""
    from tasks.versions import versions

    tags = {VERSIONS: json.dumps(versions(), sort_keys=True)}
    state = git_state()
    if state is not None:
        tags["mlflow.source.git.commit"], dirty = state
        tags[GIT_DIRTY] = str(dirty).lower()
    return tags


def git_state() -> tuple[str, bool] | None:
    """(commit, modified?) of the git checkout polyprune runs from; None when it is not one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip(), bool(dirty.stdout.strip())
