"""The built-in offline corpus: languages, a leak-free split, determinism, clear errors."""

import pytest

from tasks.data import builtin
from tasks.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One fresh build per session, so the test reads the installed packages, not a stale cache.
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "builtin-cache"))


def test_the_ten_languages_are_there_with_text():
    for lang in builtin.TARGETS:
        assert lang in builtin.LANGUAGES
        for split in builtin.SPLITS:
            docs = builtin.documents(lang, split)
            assert docs and sum(map(len, docs)) >= 2000, (lang, split)
    assert list(builtin.LANGUAGES) == sorted(builtin.LANGUAGES)


def test_calib_and_eval_never_overlap_in_any_language():
    held_out = set()
    for lang in builtin.LANGUAGES:
        for doc in builtin.documents(lang, "eval"):
            held_out |= builtin._windows(doc)
    eval_paragraphs = {p for lang in builtin.LANGUAGES for d in builtin.documents(lang, "eval") for p in d.split("\n")}
    training = [d for lang in builtin.LANGUAGES for d in builtin.documents(lang, "calib")] + builtin.rest_documents()
    for doc in training:
        paragraphs = doc.split("\n")
        assert not eval_paragraphs.intersection(paragraphs)
        # Windows are checked per paragraph: the newline joining two paragraphs is not text anyone wrote.
        assert not any(builtin._leaks(p, held_out) for p in paragraphs)


def test_documents_are_long_enough_to_sample_windows():
    lengths = [len(d.encode()) for lang in builtin.TARGETS for d in builtin.documents(lang, "calib")]
    assert min(lengths) > 256


def test_deterministic_across_builds(monkeypatch, tmp_path):
    first = {lang: builtin.documents(lang, "calib") for lang in builtin.TARGETS}
    builtin._corpus.cache_clear()
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path))  # forces a rebuild from the packages
    try:
        assert {lang: builtin.documents(lang, "calib") for lang in builtin.TARGETS} == first
        assert (tmp_path / "builtin").is_dir()
    finally:
        builtin._corpus.cache_clear()


@pytest.mark.parametrize(("lang", "split", "field"), [("xx", "calib", "lang"), ("en", "train", "split")])
def test_bad_input_names_the_field(lang, split, field):
    with pytest.raises(UserError) as err:
        builtin.documents(lang, split)
    assert err.value.field == field and "allowed" in err.value.message


def test_describe_reports_sizes_and_licences():
    info = builtin.describe()
    assert info["sw"]["calib_chars"] > 5000 and "gflanguages:udhr" in info["sw"]["sources"]
    assert info["packages"]["gflanguages"]["licence"] == "Apache-2.0"
    assert info["packages"]["django"]["version"] == "5.2.19"
