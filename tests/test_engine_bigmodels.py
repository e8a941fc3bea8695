"""Models bigger than the device or the host: block-by-block perplexity and the host-memory check."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from archs import arch_configs  # noqa: E402

from tasks.errors import UserError
from tasks.evaluation.perplexity import window_nll
from tasks.models import check_host_memory, fits_device, weight_bytes
from tasks.pruning.pipeline import blockwise_logits


def tiny(arch, dtype=torch.float64, seed=0):
    cfg = copy.deepcopy(arch_configs()[arch])
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


# Llama (tensor outputs, rotary from the model), BLOOM (tuples, ALiBi), Gemma2 (sliding windows
# per layer, final logit soft-capping, scaled embeddings): what follows the last block differs in each.
@pytest.mark.parametrize("arch", ["llama", "bloom", "gemma2"])
def test_blockwise_logits_and_nll_equal_the_full_forward(arch):
    model = tiny(arch)
    windows = torch.randint(3, 384, (5, 40), generator=torch.Generator().manual_seed(1))  # 40 > sliding window 16
    with torch.no_grad():
        full = model(input_ids=windows, use_cache=False).logits
    got = torch.cat(list(blockwise_logits(model, windows, 2, "cpu")))
    torch.testing.assert_close(got, full, rtol=0, atol=1e-10)
    # the model comes back whole: its own forward is unchanged afterwards
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=windows, use_cache=False).logits, full, rtol=0, atol=0)

    dense_total, dense_count = window_nll(model, windows, batch_size=2, blockwise=False)
    total, count = window_nll(model, windows, batch_size=2, device="cpu", blockwise=True, windows_per_pass=3)
    assert count == dense_count == 5 * 39
    # the logits agree to 1e-10 (above); the NLL is summed in float32, as window_nll does for any model
    assert total == pytest.approx(dense_total, rel=1e-6, abs=0)


def test_blockwise_nll_differs_for_another_model():
    """The equality above is not vacuous: a differently seeded model gives another NLL."""
    windows = torch.randint(3, 384, (4, 24), generator=torch.Generator().manual_seed(2))
    a, _ = window_nll(tiny("llama", seed=0), windows, blockwise=True)
    b, _ = window_nll(tiny("llama", seed=1), windows, blockwise=True)
    assert abs(a - b) > 1e-3


def test_host_memory_counts_every_cpu_model_as_fitting_the_cpu():
    assert fits_device(tiny("llama"), "cpu")


@pytest.mark.parametrize("arch", ["llama", "bloom", "opt"])
@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_weight_bytes_from_the_config_match_the_built_model(arch, dtype, torch_dtype):
    cfg = arch_configs()[arch]
    model = AutoModelForCausalLM.from_config(cfg).to(torch_dtype)
    assert weight_bytes(cfg, dtype) == sum(p.numel() * p.element_size() for p in model.parameters())


def test_weight_bytes_auto_follows_the_config_dtype():
    cfg = copy.deepcopy(arch_configs()["llama"])
    cfg.dtype = "bfloat16"
    assert weight_bytes(cfg, "auto") == weight_bytes(cfg, "bfloat16") < weight_bytes(cfg, "float32")


def test_host_memory_check_fails_in_one_line_under_a_simulated_limit(tiny_llama):
    need = check_host_memory(str(tiny_llama), "float32", available=10**12)
    assert need > 0
    with pytest.raises(UserError) as e:
        check_host_memory(str(tiny_llama), "float32", available=need // 2)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model: ") and str(tiny_llama) in msg
    assert re.search(r"needs about [1-9][0-9.]* [KM]iB of host memory \(float32 weights\), but only [1-9][0-9.]* [KM]iB", msg)
    # the real host has far more than a tiny model needs
    assert check_host_memory(str(tiny_llama)) == need


def test_host_memory_check_of_a_folder_without_a_config(tmp_path):
    with pytest.raises(UserError, match="cannot read the config"):
        check_host_memory(str(tmp_path), available=10**12)


def test_api_perplexity_forwards_device_and_blockwise(tiny_llama, text_dir, monkeypatch):
    from tasks import api
    from tasks.evaluation import perplexity as ppl_module

    model, tok = api.load_model(str(tiny_llama), "float64")
    args = dict(data=str(text_dir), seqlen=32, nsamples=4)
    full = api.perplexity(model, tok, ["en", "sw"], **args)
    calls = []

    def spy(*a, **kw):  # the real block-by-block pass, counted
        calls.append(a[3])
        return blockwise_logits(*a, **kw)

    monkeypatch.setattr(ppl_module, "blockwise_logits", spy)
    assert api.perplexity(model, tok, ["en", "sw"], **args, device="cpu", blockwise=False) == full
    assert not calls
    blocks = api.perplexity(model, tok, ["en", "sw"], **args, device="cpu", blockwise=True)
    assert calls and all(str(d) == "cpu" for d in calls)
    assert blocks == pytest.approx(full, rel=1e-9)
    if not torch.cuda.is_available():  # the device reaches the check: a missing one is a one-line error
        with pytest.raises(UserError, match="^device: 'cuda'"):
            api.perplexity(model, tok, ["en"], **args, device="cuda")
    with pytest.raises(UserError, match="^device: 'gpu0' is not a torch device"):
        api.perplexity(model, tok, ["en"], **args, device="gpu0")


def test_host_memory_cap_from_the_environment(tiny_llama, monkeypatch):
    from tasks.models import HOST_MEMORY_ENV, available_host_memory

    real = available_host_memory()
    monkeypatch.setenv(HOST_MEMORY_ENV, "0.5")
    assert available_host_memory() == min(real, 2**29)
    monkeypatch.setenv(HOST_MEMORY_ENV, "0.0001")  # ~105 KB: less than the tiny model's weights
    with pytest.raises(UserError, match="host memory"):
        check_host_memory(str(tiny_llama), "float32")
    monkeypatch.setenv(HOST_MEMORY_ENV, "lots")
    with pytest.raises(UserError, match=f"^{HOST_MEMORY_ENV}: must be a number of GiB, got 'lots'"):
        available_host_memory()


def test_fits_device_with_a_simulated_budget():
    model = tiny("llama", torch.float32)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert fits_device(model, "cpu", free=2 * size)
    assert not fits_device(model, "cpu", free=size)  # the reserve leaves too little
    assert fits_device(model, "cpu", reserve=0, free=size)
