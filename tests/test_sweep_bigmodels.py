"""Models bigger than the device or the host on the sweep's worker (orchestrator/engine/worker.py):
the lm-eval device map under simulated GPU budgets, the host path (block-by-block pruning and
perplexity, offloaded lm-eval) against the fast path on the CPU, the host-memory check, and a
sweep on a real local Ray in which one model is too large for the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import check_device_map
from safetensors.torch import load as safetensors_load
from transformers import AutoModelForCausalLM, ByT5Tokenizer, LlamaConfig

from conftest import tiny_llama_config
from helpers import child_runs, write_yaml
from orchestrator.cli import main
from orchestrator.engine.worker import CellRunner
from tasks.evaluation.lmeval import run_lmeval
from tasks.evaluation.offload import dispatched, offload_map
from tasks.models import HOST_MEMORY_ENV, check_host_memory, linear_bytes

SWEEP = {
    "name": "big",
    "models": ["./tiny"],
    "methods": ["wanda"],
    "sparsities": [0.5],
    "calibration": {"languages": ["en"], "data": "./text", "nsamples": 4, "seqlen": 32},
    "seeds": [0],
    "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 4},
                   "lm_eval": {"tasks": ["polyprune_cont_en"], "limit": 4}},
    "resources": {"cpu_workers": 1},
}


def tasks_of(run_dir: Path, **over) -> dict[str, dict]:
    """The plain dicts the sweep's workers get, by cell kind ("baseline", "prune")."""
    from orchestrator.sweep.file import expand, load_sweep

    cells = expand(load_sweep(write_yaml(run_dir / "sweep.yaml", SWEEP, **over)))
    return {c.kind: c.task() for c in cells}


def nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


# ---------------------------------------------------------------- the lm-eval device map


def test_offload_map_fills_the_gpus_in_order_then_the_host():
    model = AutoModelForCausalLM.from_config(tiny_llama_config(layers=5))
    block = nbytes(model.model.layers[0])
    head = nbytes(model.model.embed_tokens) + nbytes(model.model.norm) + nbytes(model.model.rotary_emb)
    # simulated budgets: GPU 0 takes the head and one block, GPU 1 two blocks, the rest stays on the host
    budgets = {0: head + block + block // 2, 1: 2 * block + 10}
    got = offload_map(model, budgets)
    assert got == {"model.embed_tokens": 0, "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0,
                   "model.layers.0": 0, "model.layers.1": 1, "model.layers.2": 1,
                   "model.layers.3": "cpu", "model.layers.4": "cpu"}
    check_device_map(model, got)  # every parameter is placed
    # the tied head counts once: one byte less and GPU 0 has no room for a block
    assert offload_map(model, {0: head + block - 1, 1: 10 * block})["model.layers.0"] == 1
    assert set(offload_map(model, {0: 10 * (head + 5 * block)}).values()) == {0}
    assert offload_map(model, {}) == {"": "cpu"}  # no GPU: the host runs everything


def test_dispatched_model_gives_the_same_lm_eval_numbers_and_comes_back_unchanged(tiny_llama):
    from tasks.models import load_model

    model, tok = load_model(str(tiny_llama))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = run_lmeval(model, tok, ["polyprune_cont_en"], limit=6)["metrics"]
    with dispatched(model, offload_map(model, {})):
        assert hasattr(model, "hf_device_map") and hasattr(model.model.layers[0], "_hf_hook")
        hooked = run_lmeval(model, tok, ["polyprune_cont_en"], limit=6)["metrics"]
    assert hooked == plain and plain
    assert not hasattr(model, "hf_device_map") and not hasattr(model.model.layers[0], "_hf_hook")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "to" not in model.__dict__  # accelerate's move warning is gone too


# ---------------------------------------------------------------- the worker's two paths


def run_ok(runner: CellRunner, task: dict) -> dict:
    out = runner.run(task)
    assert out["ok"], out.get("traceback")
    return out


def test_host_path_equals_the_fast_path_on_the_cpu(run_dir):
    """A simulated 1-byte device: the model stays on the host, pruning moves one block at a time,
    perplexity runs block by block and lm-eval through accelerate's hooks: the same masks and numbers."""
    tasks = tasks_of(run_dir)
    fast, host = CellRunner(), CellRunner(device_memory=1)
    for kind in ("prune", "baseline"):
        a, b = run_ok(fast, tasks[kind]), run_ok(host, tasks[kind])
        assert a["tags"]["polyprune.placement"] == "device" and b["tags"]["polyprune.placement"] == "blockwise"
        quality = sorted(k for k in a["metrics"] if k.startswith(("ppl.", "lmeval.", "sparsity.")))
        assert {"ppl.en", "ppl.sw", "sparsity.actual"} <= set(quality) and any(k.startswith("lmeval.") for k in quality)
        for k in quality:
            assert b["metrics"][k] == pytest.approx(a["metrics"][k], rel=1e-6, abs=1e-9), k
        if kind == "prune":
            masks_a, masks_b = (safetensors_load(x["artifacts"]["masks.safetensors"]) for x in (a, b))
            assert masks_a.keys() == masks_b.keys() and all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
            assert json.loads(b["artifacts"]["result.json"])["sparsity_actual"] == a["metrics"]["sparsity.actual"]


def test_simulated_device_big_enough_keeps_the_fast_path(run_dir):
    out = run_ok(CellRunner(device_memory=10**9), tasks_of(run_dir, evaluation={"ppl": {"languages": ["en"], "nsamples": 2}})["prune"])
    assert out["tags"]["polyprune.placement"] == "device"


def test_host_too_small_fails_the_cell_in_one_line_and_the_runner_goes_on(run_dir, tiny_llama, monkeypatch):
    tasks = tasks_of(run_dir, evaluation={"ppl": {"languages": ["en"], "nsamples": 2}})
    runner = CellRunner()
    monkeypatch.setenv(HOST_MEMORY_ENV, "0.0001")  # ~105 KiB: below the tiny model's ~470 KiB
    out = runner.run(tasks["prune"])
    assert not out["ok"]
    assert "\n" not in out["error"] and out["error"].startswith("UserError: model: ")
    assert "of host memory" in out["error"] and "is available on this host" in out["error"]
    assert runner.model is None  # nothing was loaded
    monkeypatch.delenv(HOST_MEMORY_ENV)
    assert run_ok(runner, tasks["prune"])["metrics"]["ppl.en"] > 1


def test_no_room_for_the_dense_copy_reloads_between_cells(run_dir, tiny_llama, monkeypatch):
    """The host holds the model but not the snapshot beside it: the next cell of the same model
    reloads from disk instead of evaluating the pruned weights as the dense model."""
    tasks = tasks_of(run_dir, evaluation={"ppl": {"languages": ["en"], "nsamples": 2}})
    dense = run_ok(CellRunner(), tasks["baseline"])["metrics"]["ppl.en"]
    need = check_host_memory(str(tiny_llama), "auto", available=10**12)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert linear_bytes(model) > 2**10
    monkeypatch.setenv(HOST_MEMORY_ENV, str((need + 2**10) / 2**30))
    runner = CellRunner()
    run_ok(runner, tasks["prune"])
    assert runner.snap is None
    again = run_ok(runner, tasks["baseline"])
    assert again["metrics"]["time.load_s"] > 0 and again["metrics"]["ppl.en"] == dense


# ---------------------------------------------------------------- a sweep (real local Ray)


def huge_model(folder: Path) -> Path:
    """A model folder whose config describes ~2.2 TB of float32 weights: more than any test host
    has. Its weights are never written: the cell must fail on the config's size before loading."""
    cfg = LlamaConfig(vocab_size=384, hidden_size=32768, intermediate_size=131072, num_hidden_layers=32,
                      num_attention_heads=256, num_key_value_heads=256, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    folder.mkdir()
    cfg.save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def test_a_model_too_large_for_the_host_fails_its_cells_and_the_sweep_goes_on(ray_local, run_dir, capsys):
    huge_model(run_dir / "huge")
    path = write_yaml(run_dir / "sweep.yaml", SWEEP, models=["./tiny", "./huge"],
                      evaluation={"ppl": {"languages": ["en"], "nsamples": 2}}, resources={"cpu_workers": 2})
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    by_model: dict[str, list] = {}
    for r in child_runs(run_dir / "mlflow.db", "big"):
        by_model.setdefault(Path(r.data.params["model"]).name, []).append(r)
    assert sorted(r.info.status for r in by_model["tiny"]) == ["FINISHED"] * 2
    assert sorted(r.info.status for r in by_model["huge"]) == ["FAILED"] * 2
    for r in by_model["huge"]:
        error = r.data.tags["polyprune.error"]
        assert "\n" not in error and "huge" in error and "GiB of host memory" in error, error
        assert "attempt" not in error  # deterministic: failed once, never retried
    assert "2 FAILED" in out
