"""The built-in offline corpus: languages, leak-free splits, determinism, clear errors."""

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
        for split, least in (("calib", 5000), ("valid", 900), ("test", 1000)):
            docs = builtin.documents(lang, split)
            assert docs and sum(map(len, docs)) >= least, (lang, split)
    assert list(builtin.LANGUAGES) == sorted(builtin.LANGUAGES)


def _paragraphs(split):
    return [p for lang in builtin.LANGUAGES for d in builtin.documents(lang, split) for p in d.split("\n")]


def _training_paragraphs():
    docs = [d for lang in builtin.LANGUAGES for d in builtin.documents(lang, "calib")] + builtin.rest_documents()
    # Windows are checked per paragraph: the newline joining two paragraphs is not text anyone wrote.
    return [p for d in docs for p in d.split("\n")]


@pytest.mark.parametrize(("seen", "judged"), [("calib", "valid"), ("calib", "test"), ("valid", "test")])
def test_splits_never_overlap_in_any_language(seen, judged):
    """No paragraph, and no 32-byte window, of `judged` text appears in `seen` text of any language."""
    held_out = set().union(*(builtin._windows(p) for p in _paragraphs(judged)))
    seen_paragraphs = _training_paragraphs() if seen == "calib" else _paragraphs(seen)
    assert not set(_paragraphs(judged)).intersection(seen_paragraphs)
    assert not any(builtin._leaks(p, held_out) for p in seen_paragraphs)


def test_the_leak_filter_is_what_keeps_valid_apart():
    """Without the filter, valid would share windows with test (parallel and copied text): the test above has teeth."""
    paras = [p for paras in builtin._django_paragraphs().values() for _, p in paras]
    held_out = [p for p in paras if builtin._is_held_out(p)]
    test_windows = set().union(*(builtin._windows(p) for p in held_out if not builtin._is_valid(p)))
    unfiltered = [p for p in held_out if builtin._is_valid(p)]
    assert any(builtin._leaks(p, test_windows) for p in unfiltered)


def test_valid_and_test_split_the_held_out_text_about_evenly():
    for lang in builtin.TARGETS:
        valid, test = (sum(map(len, builtin.documents(lang, s))) for s in ("valid", "test"))
        assert 0.3 < valid / (valid + test) < 0.7, lang  # hash shares over ~20-60 paragraphs, minus leaks


def test_documents_are_long_enough_to_sample_windows():
    lengths = [len(d.encode()) for lang in builtin.TARGETS for d in builtin.documents(lang, "calib")]
    assert min(lengths) > 256


def test_deterministic_across_builds(monkeypatch, tmp_path):
    def everything():
        return {(lang, s): builtin.documents(lang, s) for lang in builtin.TARGETS for s in builtin.SPLITS}

    first = everything()
    builtin._corpus.cache_clear()
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path))  # forces a rebuild from the packages
    try:
        assert everything() == first
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
    assert info["sw"]["valid_chars"] > 1000 and info["sw"]["test_chars"] > 1000
    assert info["packages"]["gflanguages"]["licence"] == "Apache-2.0"
    assert info["packages"]["django"]["version"] == "5.2.19"


def test_carving_valid_left_the_demo_models_training_text_alone(monkeypatch):
    """The demo model is keyed by corpus_version() and trained on calib + rest: neither may depend on
    the valid/test carving, or a cached demo model would silently stand for other training text."""
    calib = {lang: builtin.documents(lang, "calib") for lang in builtin.LANGUAGES}
    rest, version, held_out = builtin.rest_documents(), builtin.corpus_version(), builtin.held_out_version()
    monkeypatch.setattr(builtin, "VALID_SHARE", 0.3)
    corpus = builtin._build()
    assert {k: v["calib"] for k, v in corpus["languages"].items()} == calib and corpus["rest"] == rest
    assert builtin.corpus_version() == version and builtin.held_out_version() != held_out
