"""The screening cache (issue 29): per-language statistics of the dense model computed once, and
low-fidelity prunes formed from them. The references are the engine's own calibration passes
(capture -> hooks -> ActStats), run fresh on the tiny saved Llama and generated text."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import save_tiny_model, tiny_llama_config, write_text_folder
from tasks.api import PruneSpec, load_model, prune, prune_from_cache, restore, snapshot, stats_cache
from tasks.data.calibration import sample_calibration
from tasks.data.langs import parse_mix
from tasks.data.sources import get_source
from tasks.errors import UserError
from tasks.models import block_linears, find_blocks
from tasks.pruning import METHODS
from tasks.pruning.pipeline import capture, collect, propagate
from tasks.pruning.screen import fill_stats, positive_counts
from tasks.pruning.stats import ActStats, language_weights

MIX = "en=0.5,sw=0.3,de=0.2"


@pytest.fixture(scope="module")
def loaded(tiny_llama):
    model, tok = load_model(str(tiny_llama))
    return model, tok, snapshot(model)


def spec_for(model_dir, text_dir, **kw):
    return PruneSpec(**{"model": str(model_dir), "method": "mwanda", "sparsity": "0.5", "calib": MIX, "data": str(text_dir),
                        "nsamples": 10, "seqlen": 32, "hp": {"lambda_var": 0.5, "lambda_prob": 0.5}, **kw})


def fresh_stats(model, ids, lang, weights, make, blocks_wanted):
    """{block: {linear: statistic}} from one calibration pass over the dense model (the schedules' pass)."""
    _, blocks = find_blocks(model)
    inps, calls = capture(model, ids, 8, "cpu")
    langs = list(lang.split(8))
    out = {}
    for i in range(blocks_wanted):
        out[i] = collect(blocks[i], block_linears(blocks[i]), lambda n, lin: make(n, lin, weights), inps, calls[i], langs)
        propagate(blocks[i], inps, calls[i])
    return out


def assert_same(a: ActStats, b: ActStats):
    assert torch.equal(a.sumsq, b.sumsq) and torch.equal(a.tokens, b.tokens) and torch.equal(a.weights, b.weights)
    assert (a.pos is None) == (b.pos is None) and (a.pos is None or torch.equal(a.pos, b.pos))


def test_cached_sums_equal_a_fresh_dense_calibration_pass(loaded, tiny_llama, text_dir, tmp_path):
    model, tok, _ = loaded
    spec = spec_for(tiny_llama, text_dir, calib="sw")
    cache = stats_cache(model, tok, spec, root=tmp_path)
    calib = sample_calibration(get_source(str(text_dir)), tok, {"sw": 1.0}, 10, 32, 0)
    w = language_weights(1)
    fresh = fresh_stats(model, calib.input_ids, calib.language, w,
                        lambda n, lin, w: ActStats(lin.weight, w, positive=positive_counts(n)), 2)
    for i, stats in fresh.items():  # every block: the cache's pass is a dense one too
        for name, lin in block_linears(find_blocks(model)[1][i]).items():
            got = fill_stats(ActStats(lin.weight, w, positive=positive_counts(name)), [cache.windows["sw"]], [10], 32, f"{i}.{name}")
            assert_same(got, stats[name])
    assert cache.summary()["bytes"] == (tmp_path / "stats").glob("*.safetensors").__next__().stat().st_size > 0


@pytest.mark.parametrize("method,schedule", [("mwanda", "cwl"), ("wanda", "owl"), ("mria", "uniform")])
def test_a_mix_from_the_cache_is_a_single_pass_calibration_with_that_mix_in_block_0(loaded, tiny_llama, text_dir, tmp_path,
                                                                                   method, schedule):
    model, tok, dense = loaded
    spec = spec_for(tiny_llama, text_dir, method=method, schedule=schedule,
                    hp={} if method == "wanda" else {"lambda_var": 0.5, "lambda_prob": 0.5})
    cache = stats_cache(model, tok, spec_for(tiny_llama, text_dir, calib="de,en,sw"), root=tmp_path)  # a wider cache serves the mix
    calib = sample_calibration(get_source(str(text_dir)), tok, parse_mix(MIX), 10, 32, 0)
    counts = [int((calib.language == i).sum()) for i in range(3)]
    assert sorted(counts) == [2, 3, 5] and calib.languages == ["de", "en", "sw"]
    m = METHODS.get(method)(METHODS.get(method).Params())
    w = language_weights(3, calib.weights)
    fresh = fresh_stats(model, calib.input_ids, calib.language, w, m.new_stats, 1)[0]
    windows = [cache.windows[l] for l in calib.languages]
    for name, lin in block_linears(find_blocks(model)[1][0]).items():
        assert_same(fill_stats(m.new_stats(name, lin, w), windows, counts, 32, f"0.{name}"), fresh[name])
    try:
        low = prune_from_cache(model, tok, spec, cache)
        restore(model, dense)
        exact = prune(model, tok, spec, progress=False)
    finally:
        restore(model, dense)
    # dense-statistics schedules: every block's target is the exact pipeline's
    assert low.result["sparsity_per_block"]["target"] == exact.result["sparsity_per_block"]["target"]
    assert low.result["fidelity"]["statistics"] == "dense-cache" and low.calibration.fingerprint == exact.calibration.fingerprint
    zero = [k for k in exact.masks if ".layers.0." in k]
    assert len(zero) == 7 and all(torch.equal(low.masks[k], exact.masks[k]) for k in zero)
    # ...and later blocks differ: the screen is an approximation, not a copy of the exact prune
    assert any(not torch.equal(low.masks[k], exact.masks[k]) for k in exact.masks if ".layers.1." in k)


def test_cache_keys_separate_models_data_seeds_nsamples_and_seqlen(loaded, tiny_llama, text_dir, tmp_path):
    model, tok, _ = loaded
    base = spec_for(tiny_llama, text_dir, calib="en")
    first = stats_cache(model, tok, base, root=tmp_path)
    again = stats_cache(model, tok, base, root=tmp_path)
    assert again.files["en"]["path"] == first.files["en"]["path"] and again.files["en"]["build_s"] == 0
    assert all(torch.equal(first.windows["en"][k], again.windows["en"][k]) for k in first.windows["en"])
    other_text = write_text_folder(tmp_path / "text2", seed=1)
    other_dir = save_tiny_model(tmp_path / "other", tiny_llama_config(), seed=1)
    other, _ = load_model(str(other_dir))
    variants = [(model, spec_for(tiny_llama, text_dir, calib="en", seed=1)),
                (model, spec_for(tiny_llama, text_dir, calib="en", nsamples=12)),
                (model, spec_for(tiny_llama, text_dir, calib="en", seqlen=48)),
                (model, spec_for(tiny_llama, other_text, calib="en")),
                (other, base)]
    paths = {first.files["en"]["path"]}
    for m, spec in variants:
        c = stats_cache(m, tok, spec, root=tmp_path)
        assert c.files["en"]["build_s"] > 0 and c.files["en"]["path"] not in paths
        paths.add(c.files["en"]["path"])
    with pytest.raises(UserError, match="seed"):  # a handle for another seed is refused, not used
        prune_from_cache(model, tok, spec_for(tiny_llama, text_dir, calib="en", seed=1), first)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))


def _other_key(path, model, tok, tiny_llama, text_dir, root):
    # a valid file of another seed renamed into this one's place
    c = stats_cache(model, tok, spec_for(tiny_llama, text_dir, calib="en", seed=5), root=root)
    path.write_bytes(open(c.files["en"]["path"], "rb").read())


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "another key"])
def test_a_corrupt_cache_file_is_rebuilt_not_trusted(loaded, tiny_llama, text_dir, tmp_path, damage):
    from pathlib import Path

    model, tok, _ = loaded
    spec = spec_for(tiny_llama, text_dir, calib="en")
    good = stats_cache(model, tok, spec, root=tmp_path)
    path = Path(good.files["en"]["path"])
    if damage == "truncated":
        _truncate(path)
    elif damage == "bit flip":
        _flip_last_byte(path)
    else:
        _other_key(path, model, tok, tiny_llama, text_dir, tmp_path)
    with pytest.warns(UserWarning, match="rebuilding"):
        again = stats_cache(model, tok, spec, root=tmp_path)
    assert again.files["en"]["rebuilt"] and again.files["en"]["build_s"] > 0
    assert all(torch.equal(good.windows["en"][k], again.windows["en"][k]) for k in good.windows["en"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats_cache(model, tok, spec, root=tmp_path).files["en"]["build_s"] == 0  # the rebuilt file is trusted


def test_sparsegpt_is_refused_and_magnitude_needs_no_cache(loaded, tiny_llama, text_dir, tmp_path, monkeypatch):
    model, tok, dense = loaded
    with pytest.raises(UserError, match="full fidelity"):
        prune_from_cache(model, tok, spec_for(tiny_llama, text_dir, method="sparsegpt", hp={}))
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path))
    try:
        res = prune_from_cache(model, tok, spec_for(tiny_llama, text_dir, method="magnitude", hp={}))
    finally:
        restore(model, dense)
    assert res.result["fidelity"]["cache"] is None and not (tmp_path / "stats").exists()
    assert abs(res.result["sparsity_actual"] - 0.5) < 0.01


def test_kl_to_the_dense_model_is_zero_for_itself_and_matches_its_definition(loaded, tiny_llama, text_dir):
    from tasks.data.calibration import eval_windows
    from tasks.evaluation.kl import reference_log_probs, window_nll_kl
    from tasks.evaluation.perplexity import window_losses

    model, tok, dense = loaded
    windows = eval_windows(get_source(str(text_dir)), tok, "de", 32, 5, "valid")
    ref = reference_log_probs(model, windows[:3], batch_size=2)
    nll, kl = window_nll_kl(model, windows, ref, batch_size=2)
    assert kl.shape == (3,) and torch.equal(kl, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(nll, window_losses(model, windows)[0], rtol=1e-5)
    try:
        with torch.no_grad():
            for lin in block_linears(find_blocks(model)[1][0]).values():
                lin.weight.mul_(torch.rand_like(lin.weight) > 0.5)
            _, kl = window_nll_kl(model, windows, ref, batch_size=2)
            logq = torch.log_softmax(model(input_ids=windows[:3]).logits[:, :-1].double(), -1)
    finally:
        restore(model, dense)
    expected = (ref.double().exp() * (ref.double() - logq)).sum((-1, -2))
    assert (kl > 0).all() and torch.allclose(kl, expected, rtol=1e-4)
