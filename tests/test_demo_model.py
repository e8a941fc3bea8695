"""The demo model: deterministic training, a falling loss, a cached folder, sane metrics; the
shipped weights are the recipe's, load identically everywhere, and a rebuild reproduces them."""

import json
import os
import shutil

import pytest
import torch

from tasks import demo_model, demo_quality
from tasks.data import builtin
from tasks.demo_model import DemoConfig
from tasks.errors import UserError

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
    assert 0 < demo_quality.bits_per_byte(model, tokenizer, texts, seqlen=64) < 8  # beats a uniform guess


def test_bits_per_byte_ignores_padding():
    model, tokenizer, _ = demo_model.train(DemoConfig(hidden=32, layers=1, heads=2, ffn=64, steps=1, batch=2), False)
    texts = ["short", "a much longer text that needs padding for the short one"]
    together = demo_quality.bits_per_byte(model, tokenizer, texts)
    one_by_one = [demo_quality.bits_per_byte(model, tokenizer, [t]) for t in texts]
    weights = [len(t) - 1 for t in texts]  # the first byte of each window has no context
    assert together == pytest.approx(sum(w * b for w, b in zip(weights, one_by_one)) / sum(weights), rel=1e-5)


def test_unigram_baseline():
    assert demo_quality.unigram_bits_per_byte(["ab"], ["ab"], alpha=0.0) == pytest.approx(1.0)
    assert demo_quality.unigram_bits_per_byte([""], ["x"]) == pytest.approx(8.0)


def test_the_recipe_skews_languages_like_a_real_multilingual_corpus():
    p = demo_model.target_probabilities()
    assert max(p, key=p.get) == "en" and min(p, key=p.get) == "sw" and p["en"] > 30 * p["sw"]
    shares = demo_model.training_shares()
    assert DemoConfig().target_share < sum(shares.values()) <= 1.0  # the rest: text of no listed language
    assert sum(shares[l] for l in builtin.TARGETS) == pytest.approx(DemoConfig().target_share)
    mix = {l: shares[l] for l in ("en", "sw", "zh")}  # the demo's MBS mix is not uniform
    assert mix["en"] / sum(mix.values()) > 0.6 and mix["sw"] / sum(mix.values()) < 0.05


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_model, "train", lambda *a, **k: pytest.fail("trained although the weights ship"))
    return tmp_path


def test_shipped_weights_load_identically_without_training(fresh_cache):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((demo_model.SHIPPED / "training.json").read_text())
    assert record["hash"] == demo_model.recipe()[1], "the shipped weights are not the current recipe's: rebuild them"
    assert demo_model.file_sha256(demo_model.SHIPPED / "model.safetensors") == record["sha256"]
    path = demo_model.demo_model_path()
    assert json.loads((path / "training.json").read_text())["source"] == "shipped"
    shipped = load_file(demo_model.SHIPPED / "model.safetensors")
    cached = load_file(path / "model.safetensors")
    assert all(torch.equal(cached[k], v.float()) for k, v in shipped.items())  # float32 copies of the same numbers
    models = [AutoModelForCausalLM.from_pretrained(path).eval() for _ in range(2)]
    ids = torch.arange(3, 131).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(models[0](ids).logits, models[1](ids).logits)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for lang in ("en", "sw"):  # the quality recorded when the weights were made, reproduced here
        bpb = demo_quality.bits_per_byte(models[0], tokenizer, builtin.documents(lang, "valid"))
        assert bpb == pytest.approx(record["quality"][lang], abs=1e-4), lang
    assert record["quality"]["sw"] > record["quality"]["en"]  # the starved language is the weak one


def test_corrupt_shipped_weights_are_one_clear_error(fresh_cache, monkeypatch):
    bad = fresh_cache / "weights"
    shutil.copytree(demo_model.SHIPPED, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(demo_model, "SHIPPED", bad)
    with pytest.raises(UserError, match="does not match its training.json"):
        demo_model.demo_model_path()
    assert not (fresh_cache / "cache" / "demo").exists() or not any((fresh_cache / "cache" / "demo").iterdir())


@pytest.mark.skipif(os.environ.get("POLYPRUNE_TEST_REBUILD") != "1",
                    reason="retrains the demo model (6-12 min on one core); set POLYPRUNE_TEST_REBUILD=1")
def test_the_recipe_rebuilds_the_shipped_weights(tmp_path):
    """Stated tolerance: the same bfloat16 weights, or at most 1e-3 bits per byte apart on every
    target language (a different CPU may round a float32 sum differently)."""
    assert demo_model.main(["--rebuild", str(tmp_path)]) == 0
    diff = demo_quality.compare_weights(tmp_path, demo_model.SHIPPED)
    assert diff["identical"] or diff["max_bpb_diff"] <= 1e-3, diff
