"""The statistics of a verdict, pure numpy: Holm's adjustment and a crossed two-level bootstrap of a
perplexity difference over calibration seeds and evaluation windows.

Losses come as `losses[s][lang] = (nll per window, tokens per window)`: seed s's model evaluated on
a language's held-out windows (`tasks.evaluation.perplexity.window_losses`). Two models compared
are evaluated on the SAME windows, and seed s of one is paired with seed s of the other.
"""

from __future__ import annotations

import numpy as np

MEANS = ("geometric", "arithmetic")


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values in the input order: the k-th smallest (k = 0, 1, ...) is
    max over j <= k of (m - j) * p_(j), capped at 1, so the adjusted values keep the raw order."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be a list of numbers in [0, 1], got {pvalues!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def _arrays(a, b):
    """Per language: (nll of a [S, n], nll of b [S, n], tokens [S, n]); checks the pairing."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b need the same number (> 0) of seeds, paired by position; got {len(a)} and {len(b)}")
    langs = sorted(a[0])
    if not langs or any(sorted(x) != langs for x in (*a, *b)):
        raise ValueError("every seed of a and b must hold the same languages")
    out = {}
    for lang in langs:
        na, ta = (np.stack([np.asarray(x[lang][i], dtype=np.float64) for x in a]) for i in (0, 1))
        nb, tb = (np.stack([np.asarray(x[lang][i], dtype=np.float64) for x in b]) for i in (0, 1))
        if na.shape != nb.shape or na.shape != ta.shape or not np.array_equal(ta, tb) or na.shape[1] == 0:
            raise ValueError(f"{lang}: a and b must be losses of the same (> 0) evaluation windows for every seed")
        out[lang] = (na, nb, ta)
    return out


def _draw_counts(rng, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n]: how often each of n items is drawn in each replicate of n draws with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _log_mean_ppl(logppl: np.ndarray, mean: str) -> np.ndarray:
    """log of the mean over languages (axis 0) of the perplexities exp(logppl)."""
    if mean == "geometric":
        return logppl.mean(0)
    return np.logaddexp.reduce(logppl, axis=0) - np.log(logppl.shape[0])


def bootstrap_diff(a, b, n_boot: int = 10000, level: float = 0.95, rng_seed: int = 0, mean: str = "geometric") -> dict:
    """The difference a - b of ppl.mean, in percent, with a percentile interval and a two-sided p.

    Statistic: the mean over seeds of log(ppl.mean_a(s) / ppl.mean_b(s)), ppl.mean over languages of
    exp(sum nll / sum tokens): `geometric` (exp of the mean log-perplexity, as `tasks.api.ppl_metrics`'s
    ppl.mean) or `arithmetic`. Bootstrap replicates are CROSSED, not nested: the evaluation windows
    are the same text for every seed, so each replicate resamples the seeds with replacement and, per
    language, the window indices with replacement once, the same indices for every seed and both models.
    p = 2 min(share of replicates <= 0, share >= 0), floored at 1/n_boot and capped at 1.
    """
    if mean not in MEANS:
        raise ValueError(f"mean must be one of {', '.join(MEANS)}, got {mean!r}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level!r}, {n_boot!r}")
    per_lang = _arrays(a, b)
    n_seeds = len(a)
    rng = np.random.default_rng(rng_seed)
    # counts of each window (seed) drawn in a replicate turn the resampled sums into matrix products
    logs_a, logs_b, point_a, point_b = [], [], [], []
    for na, nb, tok in per_lang.values():
        n = na.shape[1]
        counts = _draw_counts(rng, n, n_boot)  # [R, n]
        tokens = tok @ counts.T  # [S, R]
        logs_a.append(na @ counts.T / tokens)
        logs_b.append(nb @ counts.T / tokens)
        point_a.append(na.sum(1) / tok.sum(1))
        point_b.append(nb.sum(1) / tok.sum(1))
    per_seed = _log_mean_ppl(np.stack(logs_a), mean) - _log_mean_ppl(np.stack(logs_b), mean)  # [S, R]
    seed_counts = _draw_counts(rng, n_seeds, n_boot)  # [R, S]
    reps = (seed_counts * per_seed.T).sum(1) / n_seeds
    point = float(np.mean(_log_mean_ppl(np.stack(point_a), mean) - _log_mean_ppl(np.stack(point_b), mean)))
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, max(1 / n_boot, 2 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0)))))
    return {"diff_pct": 100 * float(np.expm1(point)), "low_pct": 100 * float(np.expm1(low)),
            "high_pct": 100 * float(np.expm1(high)), "p": p, "level": level, "mean": mean, "n_seeds": n_seeds,
            "n_windows": {lang: int(x[0].shape[1]) for lang, x in per_lang.items()}}
