"""Shared fixtures: tiny real transformers models built here, and generated text.

Nothing is downloaded: models are random-initialised from a config and saved
with a byte-level tokenizer that needs no files.
"""

from __future__ import annotations

import os
import random
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Token caches of a test session never mix with the user's (or an earlier session's).
os.environ.setdefault("POLYPRUNE_CACHE", tempfile.mkdtemp(prefix="polyprune-test-cache-"))
# The `demo` model alias is the shipped demo model (tasks/demo_weights): no training in tests.

# Per-language alphabets for generated "languages": distinct byte statistics, so
# per-language activation statistics really differ.
ALPHABETS = {
    "en": "etaoinshrdlucmfwypvbgk",
    "de": "enisratdhulcgmobwfkzvüäöß",
    "sw": "aiunkmwtlehysgzobdjfp",
    "ru": "оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъё",
    "zh": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
}


def make_text(lang: str, n_docs: int, words_per_doc: int, seed: int) -> list[str]:
    rng = random.Random(f"{lang}/{seed}")
    letters = ALPHABETS[lang]
    docs = []
    for _ in range(n_docs):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 8))) for _ in range(words_per_doc)]
        docs.append(" ".join(words))
    return docs


def write_text_folder(path, langs=("en", "de", "sw"), n_docs=24, words_per_doc=120, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        (path / f"{lang}.txt").write_text("\n\n".join(make_text(lang, n_docs, words_per_doc, seed)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    return write_text_folder(tmp_path_factory.mktemp("text"))


def tiny_llama_config(layers=2, hidden=64, heads=4, ffn=128, positions=256, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=384, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=positions,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None, **kw,
    )


def save_tiny_model(path, config, seed=0, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM, ByT5Tokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A saved 2-block random Llama with a byte tokenizer (float32)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_llama_config())


# ---------------------------------------------------------------------------
# Sweep orchestrator fixtures (issue 4). One local Ray per test session:
# ray.init costs 4-12 s, so every test that needs Ray shares this one.
# Tests that need their own cluster (several nodes) run it in a subprocess.


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs for the session; yields its GCS address, so a
    subprocess driver can join it (`--ray-address ADDR`)."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture
def run_dir(tmp_path, tiny_llama, text_dir):
    """A folder with the tiny model and the text linked in (./tiny, ./text), so the sweep
    and search files written there use relative paths."""
    from helpers import link_inputs

    return link_inputs(tmp_path, tiny_llama, text_dir)
