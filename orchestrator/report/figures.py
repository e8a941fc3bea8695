"""The report's figures: plain data in, a PNG file out (matplotlib, Agg backend, no display).

Every function takes lists / nested lists, draws one figure, writes it to `path`
and closes it, so a report of hundreds of figures never holds them all open.
Figures use constrained layout (titles, colour bars and legends get their room
instead of being cut at the canvas edge); long titles and labels are wrapped to
the space they have; `save` checks that every text lies inside the canvas.
"""

from __future__ import annotations

import math
import textwrap
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.text import Text  # noqa: E402

DPI = 110
CHAR_WIDTH = 0.6  # a character's mean width in em (DejaVu Sans), to wrap text before it is drawn


class FigureLayoutWarning(UserWarning):
    """A figure's text would have been cut at the canvas edge (it is saved with a tight box instead)."""


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    """A figure of width x height inches with constrained layout, and its axes grid."""
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained", dpi=DPI)


def wrap(text: str, inches: float, fontsize: float = 10) -> str:
    """`text` broken into lines that fit `inches` at `fontsize` points."""
    chars = max(8, int(inches * 72 / (fontsize * CHAR_WIDTH)))
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text


def outside(fig) -> list[str]:
    """The visible texts whose drawn extent leaves the canvas (cut in the PNG); lays the figure out first."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    unused = set()  # labels of ticks beyond the axis' view: kept as artists but never drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(hi - lo, 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - slack <= tick.get_loc() <= hi + slack:
                    unused.update((id(tick.label1), id(tick.label2)))
    cut = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in unused:
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            cut.append(t.get_text())
    return cut


def save(fig, path) -> str:
    cut = outside(fig)
    if cut:  # never write a cut figure; warn, since the layout above should have made room
        warnings.warn(FigureLayoutWarning(f"{path}: text outside the canvas: {cut[:3]}"), stacklevel=3)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if cut else None)
    plt.close(fig)
    return str(path)


def text_colour(rgba) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative luminance)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def heatmap(path, values, rows, cols, *, title, cbar, fmt="{:.3g}", cmap="RdYlGn_r", center=None,
            diagonal=(), partial=(), best="min", xlabel="", ylabel="") -> str:
    """values[i][j] (NaN = missing). `diagonal`: (i, j) cells framed solid (calibrated in the
    evaluated language); `partial`: framed dashed (a mix containing it). `best`: per column,
    the best value ('min' or 'max') is printed bold, so "which calibration keeps language Y" reads
    straight off each column. Each value is printed black or white, whichever its cell's colour
    lets one read."""
    v = np.array(values, dtype=float)
    width, height = max(5.5, 2.2 + 0.9 * len(cols)), 2.2 + 0.5 * max(len(rows), 2)
    fig, axes = figure(width, height)
    ax = axes[0, 0]
    finite = v[np.isfinite(v)]
    kw = {}
    if finite.size and center is not None:  # a diverging map centred on "no change"
        span = max(abs(finite.max() - center), abs(finite.min() - center), 1e-9)
        kw = {"vmin": center - span, "vmax": center + span}
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, aspect="auto", **kw)
    # The bar is about as long as the axes are high: wrap its label to that.
    bar = fig.colorbar(im, ax=ax, label=wrap(cbar, 0.45 * height), shrink=0.9)
    # Ticks sit at the cells' centres: a grid (a style a library in this process set, e.g. ggplot) would cross every value.
    ax.grid(False)
    bar.ax.grid(False)
    ax.set_xticks(range(len(cols)), cols, rotation=30 if max(map(len, cols), default=0) > 4 else 0, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap(title, width - 0.6), fontsize=10)
    for j in range(v.shape[1] if v.ndim == 2 else 0):
        col = v[:, j]
        pick = None
        if best and np.isfinite(col).any():
            pick = int(np.nanargmin(col) if best == "min" else np.nanargmax(col))
        for i in range(v.shape[0]):
            if np.isfinite(v[i, j]):
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=8,
                        color=text_colour(im.cmap(im.norm(v[i, j]))), fontweight="bold" if i == pick else "normal")
    halo = [patheffects.withStroke(linewidth=4, foreground="white")]  # the frame shows on dark cells too
    for cells, style in ((diagonal, "-"), (partial, "--")):
        for i, j in cells:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ls=style, ec="black", path_effects=halo))
    return save(fig, path)


def panels(path, x_labels, panels: dict, *, title, ylabel, logy=False) -> str:
    """One subplot per panel name; each panel {series label: [y per x]} (None = missing)."""
    n = max(len(panels), 1)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axes = figure(4.2 * ncol, 3.2 * nrow + 0.4, nrow, ncol)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        for label, ys in series.items():
            pts = [(i, y) for i, y in enumerate(ys) if y is not None and math.isfinite(y)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xticks(range(len(x_labels)), x_labels)
        ax.set_title(wrap(name, 3.8, 9), fontsize=9)
        ax.set_ylabel(ylabel)
        ys = [y for s in series.values() for y in s if y is not None and math.isfinite(y) and y > 0]
        if logy and ys and max(ys) / min(ys) > 3:  # log only where it spans a range; else ticks read 3.9x10^2
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    legend(fig, axes.flat[0], title="calibration")
    fig.suptitle(wrap(title, 4.2 * ncol - 0.4), fontsize=10)
    return save(fig, path)


def legend(fig, ax, title=None) -> None:
    """The figure's legend beside its axes (inside them, long labels ran off the canvas)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, [wrap(lab, 2.2, 7) for lab in labels], loc="outside right upper", fontsize=7,
                   title=title, title_fontsize=7)


def depth_lines(path, blocks, series: dict, *, title, ylabel="Jaccard of pruned sets") -> str:
    """One line per series over block index (depth)."""
    fig, axes = figure(7.5, 3.8)
    ax = axes[0, 0]
    for label, ys in series.items():
        ax.plot(blocks, ys, marker="o", label=label)
    ax.set_xlabel("block (depth)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(blocks)
    ax.set_title(wrap(title, 5.0), fontsize=10)
    ax.grid(alpha=0.3)
    legend(fig, ax)
    return save(fig, path)


def block_sparsity(path, panels: dict, *, title) -> str:
    """panels {schedule: [(calibration label, target per block, achieved per block)]}."""
    n = max(len(panels), 1)
    fig, axes = figure(4.5 * n + 1.6, 3.8, 1, n)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for k, (label, target, actual) in enumerate(lines):
            c = f"C{k % 10}"
            ax.plot(range(len(target)), target, ls="--", color=c, lw=1)
            ax.plot(range(len(actual)), actual, marker="o", color=c, label=label)
        ax.set_title(wrap(f"schedule {name}  (dashed: target)", 4.0, 9), fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylabel("sparsity")
        ax.grid(alpha=0.3)
    legend(fig, axes.flat[0], title="calibration")
    fig.suptitle(wrap(title, 4.5 * n), fontsize=10)
    return save(fig, path)


def history(path, numbers, values, *, metric, direction) -> str:
    """Optimization history: each trial's value and the best so far."""
    fig, axes = figure(6.5, 3.6)
    ax = axes[0, 0]
    ax.scatter(numbers, values, s=18, label="trial")
    best, run = [], None
    for v in values:
        run = v if run is None else (min(run, v) if direction == "minimize" else max(run, v))
        best.append(run)
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(wrap(f"optimization history ({direction} {metric})", 6.0), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def pareto(path, xs, ys, front, labels, *, xmetric, ymetric) -> str:
    """Trials in the plane of two objectives; the Pareto front joined and labelled."""
    fig, axes = figure(6.5, 4.2)
    ax = axes[0, 0]
    idx = [i for i in range(len(xs)) if not front[i]]
    ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=18, color="C0", alpha=0.6, label="trial")
    f = sorted((xs[i], ys[i], labels[i]) for i in range(len(xs)) if front[i])
    if f:
        ax.plot([p[0] for p in f], [p[1] for p in f], "o-", color="C3", label="Pareto front")
        for x, y, lab in f:
            # Labels grow away from the plot's right and top edges, so none runs off the canvas.
            right, top = x > np.mean(ax.get_xlim()), y > np.mean(ax.get_ylim())
            ax.annotate(lab, (x, y), fontsize=6, xytext=(-3 if right else 3, -3 if top else 3), textcoords="offset points",
                        ha="right" if right else "left", va="top" if top else "bottom")
    ax.set_xlabel(xmetric)
    ax.set_ylabel(ymetric)
    ax.set_title("Pareto front", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def grouped_bars(path, groups, series: dict, *, title, ylabel) -> str:
    """Bars per group (e.g. evaluation language) for each series (e.g. dense, baselines, best mix)."""
    width = 3.8 + 1.1 * len(groups) * max(1, len(series) / 3)
    fig, axes = figure(width, 3.8)
    ax = axes[0, 0]
    bar = 0.8 / max(len(series), 1)
    for k, (label, ys) in enumerate(series.items()):
        pos = [g + (k - (len(series) - 1) / 2) * bar for g in range(len(groups))]
        ax.bar(pos, [np.nan if y is None else y for y in ys], bar, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap(title, width - 2.8), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    legend(fig, ax)
    return save(fig, path)


def importances(path, values: dict, *, title) -> str:
    """Horizontal bars, most important on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig, axes = figure(6, 1.4 + 0.35 * max(len(items), 1))
    ax = axes[0, 0]
    ax.barh([k for k, _ in items], [v for _, v in items], color="C2")
    ax.set_xlabel("importance")
    ax.set_title(wrap(title, 4.5), fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return save(fig, path)


def valid_vs_test(path, points, *, metric) -> str:
    """Every trial's metric on valid (x) and on test (y); points (valid, test, is_baseline)."""
    fig, axes = figure(5.5, 4.5)
    ax = axes[0, 0]
    for flag, colour, label in ((False, "C0", "searched trial"), (True, "C1", "baseline")):
        xs, ys = [p[0] for p in points if p[2] == flag], [p[1] for p in points if p[2] == flag]
        ax.scatter(xs, ys, s=20, color=colour, label=label)
    lo, hi = min(min(p[:2]) for p in points), max(max(p[:2]) for p in points)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="test = valid")
    ax.set_xlabel(wrap(f"{metric} on valid (what the search optimised)", 4.5))
    ax.set_ylabel(wrap(f"{metric} on test (never seen by the search)", 3.6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
