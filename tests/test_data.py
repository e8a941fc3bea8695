"""Calibration protocol, language mixes and text sources."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from transformers import ByT5Tokenizer

from tasks.data import sources
from tasks.data.builtin import cache_root
from tasks.data.calibration import eval_windows, sample_calibration
from tasks.data.langs import allocate, canonical_mix, parse_mix, split_counts
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


def test_allocation_rules():
    mbs = {"en": 0.85, "sw": 0.02, "zh": 0.13}
    # proportional is largest remainder wherever that gives every language with weight a window ...
    for mix, n in ((mbs, 64), ({"en": 0.7, "de": 0.3}, 10), ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 4)):
        assert allocate(mix, n) == split_counts(mix, n)
    # ... and otherwise floors them at one, splitting the rest over the others again
    assert split_counts(mbs, 16) == {"en": 14, "sw": 0, "zh": 2} and allocate(mbs, 16) == {"en": 13, "sw": 1, "zh": 2}
    assert allocate({"a": 0.96, "b": 0.02, "c": 0.02}, 5) == {"a": 3, "b": 1, "c": 1}
    # equal: the same count for every language with weight, largest remainder for the rest; none for weight 0
    assert allocate(mbs, 64, "equal") == {"en": 22, "sw": 21, "zh": 21}
    assert allocate({"en": 0.9, "de": 0.1, "sw": 0.0}, 7, "equal") == {"de": 4, "en": 3, "sw": 0}  # ties: sort order
    assert allocate({"en": 0.9, "de": 0.1, "sw": 0.0}, 7) == {"de": 1, "en": 6, "sw": 0}
    for allocation in ("proportional", "equal"):
        with pytest.raises(UserError) as e:
            allocate(mbs, 2, allocation)
        assert e.value.field == "nsamples" and "nsamples >= 3" in e.value.message
    with pytest.raises(UserError) as e:
        allocate(mbs, 64, "tokens")
    assert e.value.field == "allocation"


def test_calibration_carries_the_mix_weights_and_its_allocation(text_dir):
    src = get_source(str(text_dir))
    prop = sample_calibration(src, TOK, {"en": 0.8, "sw": 0.2, "de": 0.0}, 5, 32, seed=0)
    equal = sample_calibration(src, TOK, {"en": 0.8, "sw": 0.2, "de": 0.0}, 5, 32, seed=0, allocation="equal")
    assert prop.languages == equal.languages == ["en", "sw"] and prop.weights == pytest.approx([0.8, 0.2])
    assert prop.language.tolist() == [0, 0, 0, 0, 1] and equal.language.tolist() == [0, 0, 0, 1, 1]
    assert prop.fingerprint != equal.fingerprint  # the key holds the counts: no shared cached set
    assert torch.equal(prop.input_ids[:3], equal.input_ids[:3]) and torch.equal(prop.input_ids[4], equal.input_ids[3])


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
    text = {split: "\n\n".join(src.documents("de", split)) for split in sources.SPLITS}
    cal = sample_calibration(src, TOK, {"de": 1.0}, 8, 24, seed=0)
    for row in cal.input_ids:
        window = TOK.decode(row)
        assert window in text["calib"] and window not in text["valid"] and window not in text["test"]
    for split in ("valid", "test"):
        rows = eval_windows(src, TOK, "de", 24, split=split)
        assert len(rows) > 0 and all(TOK.decode(r) in text[split] for r in rows)
    assert torch.equal(eval_windows(src, TOK, "de", 24), eval_windows(src, TOK, "de", 24, split="test"))
    with pytest.raises(UserError) as e:
        eval_windows(src, TOK, "de", 24, split="calib")
    assert e.value.field == "split"


def _assert_disjoint(src, lang):
    docs = {split: src.documents(lang, split) for split in sources.SPLITS}
    assert all(docs.values()), {k: len(v) for k, v in docs.items()}
    for a, b in itertools.combinations(sources.SPLITS, 2):
        assert set(docs[a]).isdisjoint(docs[b]), (a, b)
        # no document's text inside another split's (slices of one document must not overlap)
        assert not any(x in y or y in x for x in docs[a] for y in docs[b]), (a, b)
    return docs


def test_folder_slices_three_disjoint_splits(text_dir):
    src = get_source(str(text_dir))
    docs = _assert_disjoint(src, "en")
    all_docs = src._read("en")
    assert docs["calib"] + docs["valid"] + docs["test"] == all_docs  # calib, then valid, then test: nothing lost
    assert len(docs["valid"]) == len(docs["test"]) == round(len(all_docs) * sources.SLICE)
    assert docs == {split: get_source(str(text_dir)).documents("en", split) for split in sources.SPLITS}


@pytest.mark.parametrize("n_docs", [1, 2])
def test_folder_with_too_few_documents_is_cut_by_length(tmp_path, n_docs):
    (tmp_path / "sw.txt").write_text("\n\n".join(" ".join(f"w{d}x{i}" for i in range(200)) for d in range(n_docs)))
    docs = _assert_disjoint(get_source(str(tmp_path)), "sw")
    assert " ".join(docs["calib"] + docs["valid"] + docs["test"]).split() == (tmp_path / "sw.txt").read_text().split()


def test_folder_jsonl_and_explicit_held_out_files(tmp_path):
    (tmp_path / "fr.jsonl").write_text("\n".join(json.dumps({"text": f"document {i} " * 30}) for i in range(20)))
    (tmp_path / "fr.test.txt").write_text("held out one\n\nheld out two\n")
    src = get_source(str(tmp_path))
    assert src.languages() == ["fr"]
    assert src.documents("fr", "test") == ["held out one", "held out two"]
    # valid is still sliced off the end of the documents, test is not: calibration keeps the rest
    assert len(src.documents("fr", "valid")) == 2 and len(src.documents("fr", "calib")) == 18
    (tmp_path / "fr.valid.jsonl").write_text(json.dumps({"text": "tuning text"}) + "\n")
    src = get_source(str(tmp_path))
    assert src.documents("fr", "valid") == ["tuning text"] and len(src.documents("fr", "calib")) == 20
    _assert_disjoint(src, "fr")
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(UserError, match="text"):
        get_source(str(tmp_path)).documents("bad", "calib")


def test_old_eval_files_are_an_error_not_silently_calibration(tmp_path):
    (tmp_path / "fr.txt").write_text("a\n\nb\n\nc\n")
    (tmp_path / "fr.eval.txt").write_text("held out\n")
    with pytest.raises(UserError) as e:
        get_source(str(tmp_path))
    assert e.value.field == "data" and "fr.eval.txt" in e.value.message and "test" in e.value.message


def test_token_sets_are_cached_on_disk(text_dir):
    src = get_source(str(text_dir))
    before = set((cache_root() / "tokens").glob("*")) if (cache_root() / "tokens").exists() else set()
    sample_calibration(src, TOK, {"sw": 1.0}, 5, 20, seed=11)
    after = set((cache_root() / "tokens").glob("*"))
    assert len(after - before) == 1


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


def test_hub_corpora_stream_three_disjoint_splits(monkeypatch):
    """The hub is unreachable here: stand in for `datasets.load_dataset` and check what is asked of it."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return iter([{"text": f"{path} {name} {split} doc {i} " * 20} for i in range(60)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setitem(sources.MAX_HUB_DOCS, "calib", 30)
    monkeypatch.setitem(sources.MAX_HUB_DOCS, "valid", 10)
    monkeypatch.setitem(sources.MAX_HUB_DOCS, "test", 10)
    mc4 = _assert_disjoint(get_source("mc4"), "sw")
    assert [len(mc4[s]) for s in sources.SPLITS] == [30, 10, 10]
    assert calls[:3] == [("allenai/c4", "sw", "train", True)] + [("allenai/c4", "sw", "validation", True)] * 2
    assert mc4["valid"][0].startswith("allenai/c4 sw validation doc 0 ") and mc4["test"][0].startswith("allenai/c4 sw validation doc 10 ")
    wiki = _assert_disjoint(get_source("wikipedia"), "de")
    assert calls[-1] == ("wikimedia/wikipedia", "20231101.de", "train", True)
    assert [d.split(" doc ")[1].split()[0] for d in (wiki["calib"][-1], wiki["valid"][0], wiki["test"][0])] == ["29", "30", "40"]
    flores = _assert_disjoint(get_source("flores"), "sw")
    assert calls[-3:] == [("openlanguagedata/flores_plus", "swh_Latn", s, True) for s in ("dev", "devtest", "devtest")]
    assert len(flores["valid"]) == len(flores["test"]) == 3  # 30 sentences each, 10 to a document
    _assert_disjoint(get_source("culturax"), "ar")
    assert calls[-1] == ("uonlp/CulturaX", "ar", "train", True)
    with pytest.raises(UserError) as e:
        get_source("mc4").documents("sw", "eval")
    assert e.value.field == "split"


def test_perplexity_reads_the_split_it_is_asked_for(tiny_llama, text_dir):
    from tasks.api import load_model, perplexity
    from tasks.evaluation.perplexity import window_nll

    model, tok = load_model(str(tiny_llama))
    src = get_source(str(text_dir))
    got = {split: perplexity(model, tok, ["de"], data=str(text_dir), seqlen=32, split=split)["de"] for split in ("valid", "test")}
    for split, ppl in got.items():
        total, count = window_nll(model, eval_windows(src, tok, "de", 32, split=split))
        assert ppl == pytest.approx(math.exp(total / count), rel=1e-9)
    assert got["valid"] != got["test"]
    assert perplexity(model, tok, ["de"], data=str(text_dir), seqlen=32)["de"] == got["test"]  # the default
    # per-window losses come from the same pass: the perplexities are bit for bit the same, and the
    # windows' sums are the totals
    ppl, per_window = perplexity(model, tok, ["de", "en"], data=str(text_dir), seqlen=32, losses=True)
    assert ppl == perplexity(model, tok, ["de", "en"], data=str(text_dir), seqlen=32)
    for lang, (nll, tokens) in per_window.items():
        windows = eval_windows(src, tok, lang, 32)
        total, count = window_nll(model, windows)
        assert nll.dtype == torch.float64 and nll.shape == tokens.shape == (len(windows),) and (tokens == 31).all()
        assert int(tokens.sum()) == count and nll.sum().item() == pytest.approx(total, rel=1e-6)
        assert ppl[lang] == math.exp(total / count)
        with torch.no_grad():  # the total as it was computed before per-window losses existed
            logits = [model(input_ids=w, use_cache=False).logits[:, :-1].float() for w in windows.split(8)]
        before = sum(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
                     for lg, w in zip(logits, windows.split(8)))
        assert total == before
    with pytest.raises(UserError) as e:
        perplexity(model, tok, ["de"], data=str(text_dir), seqlen=32, split="calib")
    assert e.value.field == "split"


def test_mbs_mix_restricts_and_renormalises_the_training_shares(tmp_path):
    from tasks.data.langs import mix_from_distribution

    shares = {"en": 0.6, "de": 0.2, "sw": 0.05, "zh": 0.15}
    # by hand: en, sw, zh hold 0.8 of the training text -> 0.6/0.8, 0.05/0.8, 0.15/0.8
    assert mix_from_distribution(shares, ["en", "sw", "zh"]) == "en=0.75,sw=0.0625,zh=0.1875"
    # en, sw hold 0.65 -> 12/13 and 1/13, rounded to 6 decimals
    assert mix_from_distribution(shares, ["sw", "en"]) == "en=0.923077,sw=0.076923"
    assert parse_mix(mix_from_distribution(shares, ["en", "sw"])) == pytest.approx({"en": 12 / 13, "sw": 1 / 13}, abs=1e-6)
    (tmp_path / "bare.yaml").write_text("en: 60\nde: 20\nsw: 5\nzh: 15\n")  # percentages are fine: renormalised
    (tmp_path / "cited.yaml").write_text("source: made-up numbers for a test\nshares: {en: 0.6, de: 0.2, sw: 0.05, zh: 0.15}\n")
    for f in ("bare.yaml", "cited.yaml"):
        assert mix_from_distribution(str(tmp_path / f), ["en", "sw", "zh"]) == "en=0.75,sw=0.0625,zh=0.1875"


@pytest.mark.parametrize(("shares", "langs", "says"), [
    ({"en": 0.6}, ["en", "sw"], "'sw' has no training share"),
    ({"en": 0.6, "sw": -0.1}, ["en", "sw"], ">= 0"),
    ({"en": 0.6, "sw": "lots"}, ["en", "sw"], ">= 0"),
    ({"en": 0.0, "sw": 0}, ["en", "sw"], "all zero"),
    ({}, ["en"], "must map language codes"),
    ({"en": 1.0}, [], "no calibration languages"),
])
def test_mbs_mix_bad_shares_name_the_problem(shares, langs, says):
    from tasks.data.langs import mix_from_distribution

    with pytest.raises(UserError) as e:
        mix_from_distribution(shares, langs)
    assert e.value.field == "calib" and says in e.value.message


def test_mbs_mix_bad_files(tmp_path):
    from tasks.data.langs import mix_from_distribution

    (tmp_path / "extra.yaml").write_text("shares: {en: 1}\nsources: typo\n")
    (tmp_path / "broken.yaml").write_text("en: [1\n")
    for path, says in ((tmp_path / "extra.yaml", "unknown key 'sources'"), (tmp_path / "broken.yaml", "cannot read"),
                       (tmp_path / "missing.yaml", "cannot read")):
        with pytest.raises(UserError) as e:
            mix_from_distribution(str(path), ["en"])
        assert says in e.value.message
