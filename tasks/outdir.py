"""Output folders of `prune` runs: checked before any work, written through a hidden
sibling folder (`api.save_outputs`) whose leftovers of killed runs are removed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import UserError


def check_out_dir(out: str | os.PathLike) -> Path:
    """Before any work: `out` is new (or an empty folder) in a writable folder."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError("out", f"{str(path)!r} already exists and is not an empty folder; choose a new one")
    if not path.parent.exists():
        raise UserError("out", f"parent folder {str(path.parent)!r} does not exist")
    if not path.parent.is_dir():
        raise UserError("out", f"{str(path.parent)!r} is a file, not a folder; choose an output folder inside a folder")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError("out", f"folder {str(path.parent)!r} is not writable")
    return path


def remove_stale_temps(out: Path) -> None:
    """Temp folders `.<out>.tmp-<pid>` of earlier runs into the same place whose process is gone (killed)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass
