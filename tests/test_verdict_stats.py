"""The verdict's statistics: Holm's adjustment by hand, and the crossed seed x window bootstrap on
synthetic losses whose true difference is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.search.verdict_stats import bootstrap_diff, holm


def test_holm_matches_the_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, and monotone in the raw order: 0.5*2 = 1.0, then max(1.0, 0.6)
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == [0.02]
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def losses(rng, n_seeds, n_lang, n_win, delta, sd_seed, sd_window, sd_rest):
    """Paired per-window losses of models a and b on the same windows. Per token: b = text difficulty
    + a seed effect + noise; a = the same + delta + the models' difference on that window (the same
    text for every seed) + its own seed effect + noise. Token counts vary per window."""
    tokens = rng.integers(100, 128, size=(n_lang, n_win)).astype(float)
    text = rng.normal(0, 0.5, size=(n_lang, n_win))
    window = rng.normal(0, sd_window, size=(n_lang, n_win))
    a, b = [], []
    for _ in range(n_seeds):
        sa, sb = rng.normal(0, sd_seed, size=(2, n_lang))
        a.append({f"l{l}": ((2 + text[l] + delta + window[l] + sa[l] + rng.normal(0, sd_rest, n_win)) * tokens[l], tokens[l])
                  for l in range(n_lang)})
        b.append({f"l{l}": ((2 + text[l] + sb[l] + rng.normal(0, sd_rest, n_win)) * tokens[l], tokens[l])
                  for l in range(n_lang)})
    return a, b


def test_the_interval_covers_a_known_difference_at_about_the_nominal_rate():
    """400 simulated datasets (6 seeds, 3 languages, 40 windows each) with seed- and window-level noise
    of similar size: the 95% interval covers the true +1.005% in 90-99% of them (measured: 94.5%;
    where the seed noise dominates, 6 seeds undercover: 86.5% in the same simulation)."""
    rng = np.random.default_rng(0)
    delta = 0.01
    truth = 100 * math.expm1(delta)
    hits = []
    for r in range(400):
        a, b = losses(rng, 6, 3, 40, delta, sd_seed=0.01, sd_window=0.05, sd_rest=0.02)
        out = bootstrap_diff(a, b, n_boot=1000, rng_seed=r)
        hits.append(out["low_pct"] <= truth <= out["high_pct"])
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_no_difference_gives_an_interval_around_zero_and_rarely_a_small_p():
    rng = np.random.default_rng(1)
    outs = [bootstrap_diff(*losses(rng, 6, 3, 40, 0.0, 0.01, 0.05, 0.02), n_boot=1000, rng_seed=r) for r in range(200)]
    small = np.mean([o["p"] < 0.05 for o in outs])
    assert small <= 0.10, small
    contains = np.mean([o["low_pct"] <= 0 <= o["high_pct"] for o in outs])
    assert contains >= 0.90, contains
    # the p-value and the interval tell the same story
    assert all((o["p"] < 0.05) == (not o["low_pct"] <= 0 <= o["high_pct"]) for o in outs if abs(o["p"] - 0.05) > 0.01)


def test_a_large_difference_is_found_and_identical_inputs_give_zero():
    rng = np.random.default_rng(2)
    a, b = losses(rng, 4, 2, 30, 0.05, 0.005, 0.01, 0.01)
    out = bootstrap_diff(a, b, n_boot=2000)
    assert out["low_pct"] > 0 and out["p"] == 1 / 2000 and out["n_seeds"] == 4 and out["n_windows"] == {"l0": 30, "l1": 30}
    same = bootstrap_diff(a, a, n_boot=500)
    assert (same["diff_pct"], same["low_pct"], same["high_pct"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_the_point_estimate_is_the_defined_statistic():
    """One seed, one window per language: ppl_a = (e^2, e^3), ppl_b = (e^1.5, e^3)."""
    a = [{"x": ([200.0], [100]), "y": ([300.0], [100])}]
    b = [{"x": ([150.0], [100]), "y": ([300.0], [100])}]
    assert bootstrap_diff(a, b, n_boot=10)["diff_pct"] == pytest.approx(100 * math.expm1(0.25))
    arithmetic = math.log((math.e**2 + math.e**3) / (math.e**1.5 + math.e**3))
    assert bootstrap_diff(a, b, n_boot=10, mean="arithmetic")["diff_pct"] == pytest.approx(100 * math.expm1(arithmetic))
    # two seeds: the mean over seeds of the log ratios
    a2, b2 = a + [{"x": ([210.0], [100]), "y": ([300.0], [100])}], b + b
    assert bootstrap_diff(a2, b2, n_boot=10)["diff_pct"] == pytest.approx(100 * math.expm1((0.25 + 0.3) / 2))


def test_unpaired_inputs_are_refused():
    a = [{"x": ([1.0, 2.0], [10, 10])}]
    with pytest.raises(ValueError, match="seeds"):
        bootstrap_diff(a, a + a)
    with pytest.raises(ValueError, match="same"):
        bootstrap_diff(a, [{"x": ([1.0, 2.0], [10, 11])}])
    with pytest.raises(ValueError, match="languages"):
        bootstrap_diff(a, [{"z": ([1.0, 2.0], [10, 10])}])


def test_ten_thousand_replicates_take_well_under_a_second():
    import time

    rng = np.random.default_rng(3)
    a, b = losses(rng, 6, 5, 50, 0.01, 0.01, 0.05, 0.02)
    t0 = time.perf_counter()
    bootstrap_diff(a, b)
    assert time.perf_counter() - t0 < 1.0
