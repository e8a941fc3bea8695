"""`polyprune prune` / `polyprune eval` end to end, and their input validation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import save_tiny_model
from orchestrator.cli import main
from tasks.pruning.masks import load_masks
from tasks.versions import versions

BASE = ["--method", "wanda", "--sparsity", "0.5", "--calib", "en=0.7,de=0.3", "--nsamples", "8", "--seqlen", "48"]


def prune_cli(tiny_llama, text_dir, out, *extra):
    return main(["prune", "--model", str(tiny_llama), "--data", str(text_dir), "--out", str(out), *BASE, *extra])


def test_prune_writes_the_contract_and_masks_rebuild_the_model(tiny_llama, text_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert prune_cli(tiny_llama, text_dir, out) == 0
    assert {"model.safetensors", "config.json", "masks.safetensors", "calibration.safetensors", "result.json"} <= {p.name for p in out.iterdir()}
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["calib"] == "de=0.3,en=0.7" and result["config"]["seqlen"] == 48
    assert result["sparsity_actual"] == pytest.approx(0.5)
    assert result["sparsity_per_block"]["target"] == [0.5, 0.5]
    assert result["versions"] == versions() and result["versions"]["optuna"] and result["time_prune_s"] > 0
    cal = load_file(out / "calibration.safetensors")
    assert cal["input_ids"].shape == (8, 48) and cal["input_ids"].dtype == torch.int64
    assert cal["language"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # de (index 0): 8 * 0.3 -> 2, en: 6
    # plain transformers loads the pruned model; base + masks rebuilds it exactly
    pruned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    masks = load_masks(out / "masks.safetensors")
    assert len(masks) == 2 * 7
    sd = base.state_dict()
    for name, keep in masks.items():
        sd[name].mul_(keep)
    for name, p in pruned.state_dict().items():
        assert torch.equal(p, sd[name]), name
    # the same through the CLI: eval of base + masks equals eval of the saved model
    capsys.readouterr()
    args = ["--ppl", "en,de", "--data", str(text_dir), "--seqlen", "48"]
    assert main(["eval", "--model", str(out), *args]) == 0
    saved = json.loads(capsys.readouterr().out)["metrics"]
    assert main(["eval", "--model", str(tiny_llama), "--masks", str(out / "masks.safetensors"), *args]) == 0
    rebuilt = json.loads(capsys.readouterr().out)["metrics"]
    assert saved == rebuilt and set(saved) == {"ppl.en", "ppl.de", "ppl.mean"}
    # --split valid reads other text than the default test split, with the same calls
    assert main(["eval", "--model", str(out), "--split", "valid", *args]) == 0
    valid = json.loads(capsys.readouterr().out)
    assert valid["split"] == "valid" and set(valid["metrics"]) == set(saved) and valid["metrics"] != saved


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    empty = save_tiny_model(root / "no-blocks", LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=0, num_attention_heads=2))
    (root / "not-a-model").mkdir()
    return {"no-blocks": empty, "not-a-model": root / "not-a-model"}


BAD = [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "half"], "sparsity"),
    (["--sparsity", "4:4"], "sparsity"),
    (["--sparsity", "2:3"], "sparsity"),  # 3 does not divide 64
    (["--method", "obs"], "method"),
    (["--schedule", "zigzag"], "schedule"),
    (["--hp", "blocksize=64"], "hp"),  # a sparsegpt key given to wanda
    (["--method", "mwanda", "--hp", "lambda_var=lots"], "hp lambda_var"),
    (["--method", "magnitude", "--hp", "scope=column"], "hp scope"),
    (["--calib", "en=-0.5,de=1"], "calib"),
    (["--calib", "en=0,de=0"], "calib"),
    (["--calib", "ja"], "calib"),
    (["--nsamples", "0"], "nsamples"),
    (["--seqlen", "4096"], "seqlen"),
    (["--nsamples", "5000"], "nsamples"),
    (["--schedule", "owl", "--sparsity", "2:4"], "schedule"),
    (["--schedule", "cwl", "--calib", "en"], "schedule"),
]


@pytest.mark.parametrize("extra,field", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_exit_2_and_no_output(tiny_llama, text_dir, tmp_path, capsys, extra, field):
    out = tmp_path / "out"
    assert prune_cli(tiny_llama, text_dir, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"polyprune prune: {field}:"), err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp*"))


@pytest.mark.parametrize("case,field", [("missing-model", "model"), ("missing-data", "data"), ("no-blocks", "model"), ("not-a-model", "model")])
def test_bad_model_or_data(tiny_llama, text_dir, tmp_path, capsys, odd_models, case, field):
    model, data = str(tiny_llama), str(text_dir)
    if case == "missing-model":
        model = str(tmp_path / "nowhere")
    elif case == "missing-data":
        data = str(tmp_path / "no-text")
    else:
        model = str(odd_models[case])
    assert main(["prune", "--model", model, "--data", data, "--out", str(tmp_path / "o"), *BASE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"polyprune prune: {field}:"), err
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_refused(tiny_llama, text_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert prune_cli(tiny_llama, text_dir, out) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_eval_bad_input(tiny_llama, text_dir, capsys):
    for args, field in ([["--ppl", "xx"], "ppl"], [["--ppl", "en", "--nsamples", "0"], "nsamples"], [[], "ppl"],
                        [["--ppl", "en", "--masks", "/no/such.safetensors"], "masks"]):
        assert main(["eval", "--model", str(tiny_llama), "--data", str(text_dir), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f": {field}:" in err[0], err


def test_console_script_exit_code_and_no_traceback(tiny_llama, text_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "prune", "--model", str(tiny_llama), "--data", str(text_dir),
                           "--out", str(tmp_path / "o"), *BASE, "--sparsity", "1.5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["polyprune prune: sparsity: must be a fraction in [0, 1) or N:M like 2:4, got '1.5'"]


def test_schedule_file_and_list(tiny_llama, text_dir, tmp_path, capsys):
    from tasks import api

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("sparsities: [0.3, 0.7]\n")
    bad.write_text("[0.3, 0.6]\n")
    assert prune_cli(tiny_llama, text_dir, tmp_path / "g", "--schedule", str(good)) == 0
    result = json.loads((tmp_path / "g" / "result.json").read_text())
    assert result["sparsity_per_block"]["target"] == [0.3, 0.7]
    assert result["sparsity_per_block"]["actual"] == pytest.approx([0.3, 0.7], abs=0.015)  # floor per row
    assert prune_cli(tiny_llama, text_dir, tmp_path / "b", "--schedule", str(bad)) == 2
    assert "mean sparsity is 0.45, not the requested 0.5" in capsys.readouterr().err
    model, tok = api.load_model(str(tiny_llama))
    spec = api.PruneSpec(model=str(tiny_llama), method="wanda", sparsity="0.5", calib="en", data=str(text_dir),
                         nsamples=4, seqlen=32, schedule=[0.4, 0.6])
    assert api.prune(model, tok, spec, progress=False).result["sparsity_per_block"]["target"] == [0.4, 0.6]


def test_eval_unknown_task_fails_before_loading_the_model(tmp_path, capsys):
    # the model folder does not exist: a task error first proves the tasks are checked first
    assert main(["eval", "--model", str(tmp_path / "none"), "--tasks", "polyprune_nonsense_xx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("polyprune eval: tasks: unknown task"), err


def test_eval_task_input_is_checked_before_loading(tmp_path, capsys):
    cases = ((["--tasks", "polyprune_cont_en", "--limit", "0"], "limit"),
             (["--tasks", "polyprune_cont_en", "--include-path", str(tmp_path / "no-such-folder")], "tasks"),
             (["--ppl", "xx", "--data", "builtin"], "ppl"), (["--ppl", "en", "--split", "calib"], "split"))
    for args, field in cases:
        assert main(["eval", "--model", str(tmp_path / "none"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"polyprune eval: {field}:"), err
