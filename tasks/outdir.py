"""Output folders of `prune` runs: checked before any work, written through a hidden
sibling folder (`save_outputs`, re-exported by tasks.api) whose leftovers of killed runs are removed."""

from __future__ import annotations

import json
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


def save_outputs(out: str | os.PathLike, model, tokenizer, res, save_model: bool = True) -> Path:
    """Write model + tokenizer, masks.safetensors, calibration.safetensors and result.json.

    Everything goes to a hidden sibling folder first and is renamed into place at the
    end, so a killed run never leaves a folder that looks complete."""
    from safetensors.torch import save_file

    from .pruning.masks import save_masks

    out = check_out_dir(out)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if save_model:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        save_masks(tmp / "masks.safetensors", res.masks, {"base_model": res.result["config"]["model"]})
        save_file({"input_ids": res.calibration.input_ids.contiguous(), "language": res.calibration.language.contiguous()},
                  str(tmp / "calibration.safetensors"), metadata={"languages": ",".join(res.calibration.languages),
                                                                      "weights": ",".join(map(repr, res.calibration.weights))})
        (tmp / "result.json").write_text(json.dumps(res.result, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
