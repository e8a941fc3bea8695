"""The report's figures: plain data in, a PNG file out (matplotlib, Agg backend, no display).

Every function takes lists / nested lists, draws one figure, writes it to `path`
and closes it, so a report of hundreds of figures never holds them all open.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def _save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def heatmap(path, values, rows, cols, *, title, cbar, fmt="{:.3g}", cmap="RdYlGn_r", center=None,
            diagonal=(), partial=(), best="min", xlabel="", ylabel="") -> str:
    """values[i][j] (NaN = missing). `diagonal`: (i, j) cells framed solid (calibrated in the
    evaluated language); `partial`: framed dashed (a mix containing it). `best`: per column,
    the best value ('min' or 'max') is printed bold, so "which calibration keeps language Y" reads
    straight off each column."""
    v = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 + 0.9 * len(cols)), 1.4 + 0.5 * max(len(rows), 2)))  # wide enough for the title
    finite = v[np.isfinite(v)]
    kw = {}
    if finite.size and center is not None:  # a diverging map centred on "no change"
        span = max(abs(finite.max() - center), abs(finite.min() - center), 1e-9)
        kw = {"vmin": center - span, "vmax": center + span}
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, aspect="auto", **kw)
    fig.colorbar(im, ax=ax, label=cbar, shrink=0.85)
    ax.set_xticks(range(len(cols)), cols, rotation=30 if max(map(len, cols), default=0) > 4 else 0, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for j in range(v.shape[1] if v.ndim == 2 else 0):
        col = v[:, j]
        pick = None
        if best and np.isfinite(col).any():
            pick = int(np.nanargmin(col) if best == "min" else np.nanargmax(col))
        for i in range(v.shape[0]):
            if np.isfinite(v[i, j]):
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=8,
                        fontweight="bold" if i == pick else "normal")
    for cells, style in ((diagonal, "-"), (partial, "--")):
        for i, j in cells:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ls=style, ec="black"))
    return _save(fig, path)


def panels(path, x_labels, panels: dict, *, title, ylabel, logy=False) -> str:
    """One subplot per panel name; each panel {series label: [y per x]} (None = missing)."""
    n = max(len(panels), 1)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        for label, ys in series.items():
            pts = [(i, y) for i, y in enumerate(ys) if y is not None and math.isfinite(y)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xticks(range(len(x_labels)), x_labels)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel)
        ys = [y for s in series.values() for y in s if y is not None and math.isfinite(y) and y > 0]
        if logy and ys and max(ys) / min(ys) > 3:  # log only where it spans a range; else ticks read 3.9x10^2
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, title="calibration", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def depth_lines(path, blocks, series: dict, *, title, ylabel="Jaccard of pruned sets") -> str:
    """One line per series over block index (depth)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, ys in series.items():
        ax.plot(blocks, ys, marker="o", label=label)
    ax.set_xlabel("block (depth)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(blocks)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def block_sparsity(path, panels: dict, *, title) -> str:
    """panels {schedule: [(calibration label, target per block, achieved per block)]}."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for k, (label, target, actual) in enumerate(lines):
            c = f"C{k % 10}"
            ax.plot(range(len(target)), target, ls="--", color=c, lw=1)
            ax.plot(range(len(actual)), actual, marker="o", color=c, label=label)
        ax.set_title(f"schedule {name}  (dashed: target)", fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylabel("sparsity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def history(path, numbers, values, *, metric, direction) -> str:
    """Optimization history: each trial's value and the best so far."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.scatter(numbers, values, s=18, label="trial")
    best, run = [], None
    for v in values:
        run = v if run is None else (min(run, v) if direction == "minimize" else max(run, v))
        best.append(run)
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"optimization history ({direction} {metric})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(path, xs, ys, front, labels, *, xmetric, ymetric) -> str:
    """Trials in the plane of two objectives; the Pareto front joined and labelled."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    idx = [i for i in range(len(xs)) if not front[i]]
    ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=18, color="C0", alpha=0.6, label="trial")
    f = sorted((xs[i], ys[i], labels[i]) for i in range(len(xs)) if front[i])
    if f:
        ax.plot([p[0] for p in f], [p[1] for p in f], "o-", color="C3", label="Pareto front")
        for x, y, lab in f:
            ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xmetric)
    ax.set_ylabel(ymetric)
    ax.set_title("Pareto front", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grouped_bars(path, groups, series: dict, *, title, ylabel) -> str:
    """Bars per group (e.g. evaluation language) for each series (e.g. dense, baselines, best mix)."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(groups) * max(1, len(series) / 3), 3.8))
    width = 0.8 / max(len(series), 1)
    for k, (label, ys) in enumerate(series.items()):
        pos = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(pos, [np.nan if y is None else y for y in ys], width, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


def importances(path, values: dict, *, title) -> str:
    """Horizontal bars, most important on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.35 * max(len(items), 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="C2")
    ax.set_xlabel("importance")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
