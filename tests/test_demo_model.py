"""The demo model: deterministic training, a falling loss, a cached folder, sane metrics."""

import json

import pytest
import torch

from tasks import demo_model
from tasks.demo_model import DemoConfig

SMALL = DemoConfig(hidden=64, layers=2, heads=4, ffn=128, steps=30, batch=8, seqlen=64, warmup=5)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """SMALL trained once into a fresh cache root, which stays set for the module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("POLYPRUNE_CACHE", str(root))
        yield root, demo_model.demo_model_path(SMALL, progress=False)


def test_training_is_deterministic_and_learns(cached):
    from safetensors.torch import load_file

    _, path = cached  # trained by the fixture; train again and compare
    model, _, log = demo_model.train(SMALL, progress=False)
    saved = load_file(path / "model.safetensors")
    for name, weight in model.state_dict().items():
        if name in saved:  # the tied lm_head is saved once
            assert torch.equal(weight, saved[name]), name
    assert log["losses"] == json.loads((path / "training.json").read_text())["losses"]
    first, last = log["losses"][:5], log["losses"][-5:]
    assert sum(last) / 5 < sum(first) / 5 - 1.0  # from ~ln(384) = 5.95 down to byte statistics at least


def test_demo_model_path_trains_once_then_reuses(cached, monkeypatch):
    root, path = cached
    assert {"config.json", "model.safetensors", "training.json"} <= {p.name for p in path.iterdir()}
    assert path.parent.parent == root / "demo" and path.name == demo_model.NAME
    assert not list((root / "demo").glob("*.tmp-*")) and demo_model.model_hash(path) == path.parent.name
    record = json.loads((path / "training.json").read_text())
    assert record["config"]["steps"] == SMALL.steps and len(record["losses"]) == SMALL.steps

    monkeypatch.setattr(demo_model, "train", lambda *a, **k: pytest.fail("retrained a cached model"))
    assert demo_model.demo_model_path(SMALL, progress=False) == path


def test_saved_model_loads_with_plain_transformers(cached):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path = cached
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["Everyone has the right to life, liberty and security of person. " * 4]
    assert 0 < demo_model.bits_per_byte(model, tokenizer, texts, seqlen=64) < 8  # beats a uniform guess


def test_bits_per_byte_ignores_padding():
    model, tokenizer, _ = demo_model.train(DemoConfig(hidden=32, layers=1, heads=2, ffn=64, steps=1, batch=2), False)
    texts = ["short", "a much longer text that needs padding for the short one"]
    together = demo_model.bits_per_byte(model, tokenizer, texts)
    one_by_one = [demo_model.bits_per_byte(model, tokenizer, [t]) for t in texts]
    weights = [len(t) - 1 for t in texts]  # the first byte of each window has no context
    assert together == pytest.approx(sum(w * b for w, b in zip(weights, one_by_one)) / sum(weights), rel=1e-5)


def test_unigram_baseline():
    assert demo_model.unigram_bits_per_byte(["ab"], ["ab"], alpha=0.0) == pytest.approx(1.0)
    assert demo_model.unigram_bits_per_byte([""], ["x"]) == pytest.approx(8.0)
