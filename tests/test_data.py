"""Calibration protocol, language mixes and text sources."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ByT5Tokenizer

from tasks.data import sources
from tasks.data.calibration import cache_root, eval_windows, sample_calibration
from tasks.data.langs import canonical_mix, parse_mix, split_counts
from tasks.data.sources import get_source
from tasks.errors import UserError

TOK = ByT5Tokenizer()


def test_mix_parsing_and_largest_remainder():
    assert parse_mix("en,de") == {"en": 0.5, "de": 0.5}
    assert canonical_mix(parse_mix("en=0.7,de=0.3")) == "de=0.3,en=0.7"
    assert canonical_mix(parse_mix("en=7,de=3")) == "de=0.3,en=0.7"
    assert split_counts({"en": 0.7, "de": 0.3}, 10) == {"de": 3, "en": 7}
    assert split_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 4) == {"a": 2, "b": 1, "c": 1}
    assert sum(split_counts({"a": 0.15, "b": 0.35, "c": 0.5}, 7).values()) == 7
    for bad in ("", "en=-1", "en=0,de=0", "en=x", "en,en", "e n"):
        with pytest.raises(UserError) as e:
            parse_mix(bad)
        assert e.value.field == "calib"


def test_same_seed_same_calibration_and_shared_prefix(text_dir):
    src = get_source(str(text_dir))
    a = sample_calibration(src, TOK, {"en": 1.0}, 6, 32, seed=3)
    b = sample_calibration(src, TOK, {"en": 1.0}, 6, 32, seed=3)
    c = sample_calibration(src, TOK, {"en": 1.0}, 6, 32, seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.shape == (6, 32) and a.input_ids.dtype == torch.int64
    mix = sample_calibration(src, TOK, {"en": 0.5, "sw": 0.5}, 6, 32, seed=3)
    assert mix.languages == ["en", "sw"] and mix.language.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(mix.input_ids[:3], a.input_ids[:3])  # per-language generators


def test_calibration_windows_come_from_calibration_text_only(text_dir):
    src = get_source(str(text_dir))
    calib_text = "\n\n".join(src.documents("de", "calib"))
    eval_text = "\n\n".join(src.documents("de", "eval"))
    assert set(src.documents("de", "calib")).isdisjoint(src.documents("de", "eval"))
    cal = sample_calibration(src, TOK, {"de": 1.0}, 8, 24, seed=0)
    for row in cal.input_ids:
        text = TOK.decode(row)
        assert text in calib_text and text not in eval_text
    for row in eval_windows(src, TOK, "de", 24):
        assert TOK.decode(row) in eval_text


def test_token_sets_are_cached_on_disk(text_dir):
    src = get_source(str(text_dir))
    before = set((cache_root() / "tokens").glob("*")) if (cache_root() / "tokens").exists() else set()
    sample_calibration(src, TOK, {"sw": 1.0}, 5, 20, seed=11)
    after = set((cache_root() / "tokens").glob("*"))
    assert len(after - before) == 1


def test_folder_jsonl_and_explicit_eval_file(tmp_path):
    (tmp_path / "fr.jsonl").write_text("\n".join(json.dumps({"text": f"document {i} " * 30}) for i in range(5)))
    (tmp_path / "fr.eval.txt").write_text("held out one\n\nheld out two\n")
    src = get_source(str(tmp_path))
    assert src.languages() == ["fr"]
    assert len(src.documents("fr", "calib")) == 5
    assert src.documents("fr", "eval") == ["held out one", "held out two"]
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(UserError, match="text"):
        get_source(str(tmp_path)).documents("bad", "calib")


def test_too_little_text_and_missing_language(text_dir):
    src = get_source(str(text_dir))
    with pytest.raises(UserError) as e:
        sample_calibration(src, TOK, {"en": 1.0}, 10_000, 64, seed=0)
    assert e.value.field == "nsamples"
    with pytest.raises(UserError) as e:
        sample_calibration(src, TOK, {"xx": 1.0}, 4, 16, seed=0)
    assert e.value.field == "calib"
    with pytest.raises(UserError) as e:
        get_source(str(text_dir / "nope"))
    assert e.value.field == "data"


def test_hub_corpora_stream_with_datasets(monkeypatch):
    """The hub is unreachable here: stand in for `datasets.load_dataset` and check what is asked of it."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return iter([{"text": f"{path} {name} {split} doc {i} " * 20} for i in range(50)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setitem(sources.MAX_HUB_DOCS, "calib", 30)
    monkeypatch.setitem(sources.MAX_HUB_DOCS, "eval", 10)
    mc4 = get_source("mc4")
    assert len(mc4.documents("sw", "calib")) == 30 and len(mc4.documents("sw", "eval")) == 10
    assert calls[:2] == [("allenai/c4", "sw", "train", True), ("allenai/c4", "sw", "validation", True)]
    wiki = get_source("wikipedia")
    calib, held = wiki.documents("de", "calib"), wiki.documents("de", "eval")
    assert calls[-1] == ("wikimedia/wikipedia", "20231101.de", "train", True)
    assert set(calib).isdisjoint(held) and len(held) == 10
    get_source("flores").documents("sw", "eval")
    assert calls[-1] == ("openlanguagedata/flores_plus", "swh_Latn", "devtest", True)
    get_source("culturax").documents("ar", "calib")
    assert calls[-1] == ("uonlp/CulturaX", "ar", "train", True)
