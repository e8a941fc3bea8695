"""Truncated, corrupt or foreign safetensors files: one line naming the file, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from conftest import save_tiny_model, tiny_llama_config
from orchestrator.cli import main
from tasks.errors import UserError
from tasks.models import load_model
from tasks.pruning.masks import apply_masks, load_masks, read_shapes, save_masks

BASE = ["--method", "wanda", "--sparsity", "0.5", "--calib", "en", "--nsamples", "4", "--seqlen", "32"]


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def broken_model(tiny_llama, tmp_path):
    folder = tmp_path / "broken-model"
    shutil.copytree(tiny_llama, folder)
    truncate(folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def pruned(tiny_llama, text_dir, tmp_path_factory):
    """A real `polyprune prune` output: masks.safetensors and calibration.safetensors."""
    out = tmp_path_factory.mktemp("pruned") / "out"
    assert main(["prune", "--model", str(tiny_llama), "--data", str(text_dir), "--out", str(out), *BASE]) == 0
    return out


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0005])
def test_truncated_weights_name_the_file(broken_model, keep, tiny_llama):
    shutil.copy(tiny_llama / "model.safetensors", broken_model / "model.safetensors")
    truncate(broken_model / "model.safetensors", keep)
    with pytest.raises(UserError) as e:
        load_model(str(broken_model))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model: ") and str(broken_model / "model.safetensors") in msg


def test_weights_that_are_not_safetensors(broken_model):
    (broken_model / "model.safetensors").write_bytes(b"\x00" * 4096)
    with pytest.raises(UserError, match="not a complete safetensors weights file"):
        load_model(str(broken_model))


def test_prune_with_truncated_weights_is_exit_2_and_writes_nothing(broken_model, text_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(broken_model), "--data", str(text_dir), "--out", str(out), *BASE]) == 2
    line = one_line(capsys)
    assert line.startswith("polyprune prune: model: ") and "model.safetensors" in line
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_masks_round_trip_and_header_check(tmp_path):
    masks = {"a.weight": torch.rand(5, 7) > 0.5, "b.weight": torch.rand(3, 16) > 0.5}
    save_masks(tmp_path / "m.safetensors", masks)
    assert read_shapes(tmp_path / "m.safetensors") == {"a.weight": [5, 7], "b.weight": [3, 16]}
    back = load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(back[k], masks[k]) for k in masks)


@pytest.mark.parametrize("case", ["truncated", "garbage", "calibration", "weights", "bad-shapes", "missing"])
def test_bad_masks_files_are_one_line_naming_the_file(pruned, tiny_llama, tmp_path, case):
    path = tmp_path / "masks.safetensors"
    if case == "truncated":
        shutil.copy(pruned / "masks.safetensors", path)
        truncate(path, 0.7)
    elif case == "garbage":
        path.write_bytes(b"not a safetensors file at all" * 10)
    elif case == "calibration":
        path = pruned / "calibration.safetensors"
    elif case == "weights":
        path = tiny_llama / "model.safetensors"
    elif case == "bad-shapes":  # a header whose shapes do not fit the packed tensors
        save_file({"x.weight": torch.zeros(2, dtype=torch.uint8)}, str(path),
                  metadata={"format": "polyprune-keep-mask-v1", "shapes": json.dumps({"x.weight": [8, 8]})})
    model, _ = load_model(str(tiny_llama))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as e:
        apply_masks(model, path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("masks: ") and str(path) in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_masks_of_another_model_leave_the_model_untouched(pruned, tmp_path):
    other = save_tiny_model(tmp_path / "other", tiny_llama_config(hidden=32, ffn=64))
    model = AutoModelForCausalLM.from_pretrained(other)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="does not fit this model"):
        apply_masks(model, pruned / "masks.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("masks", ["truncated", "calibration"])
def test_eval_with_a_bad_masks_file_is_exit_2_and_writes_nothing(pruned, tiny_llama, text_dir, tmp_path, capsys, masks):
    path = pruned / "calibration.safetensors"
    if masks == "truncated":
        path = tmp_path / "masks.safetensors"
        shutil.copy(pruned / "masks.safetensors", path)
        truncate(path, 0.5)
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_llama), "--masks", str(path), "--ppl", "en", "--data", str(text_dir),
                 "--seqlen", "32", "--nsamples", "2", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert line.startswith("polyprune eval: masks: ") and str(path) in line
    assert not out.exists()


def test_console_script_truncated_weights_no_traceback(broken_model, text_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "prune", "--model", str(broken_model), "--data",
                           str(text_dir), "--out", str(tmp_path / "o"), *BASE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_pickled_weights_are_refused(tiny_llama, tmp_path):
    """Safetensors only: a folder whose weights are a pickled pytorch_model.bin (loading one can run
    code) does not load, in one line naming the model."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UserError) as e:
        load_model(str(folder))
    assert e.value.field == "model" and "\n" not in str(e.value) and str(folder) in str(e.value)
    load_model(str(tiny_llama))  # the safetensors original loads
