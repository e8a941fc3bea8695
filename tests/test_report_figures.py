"""Every figure of `polyprune report`, drawn from small hand-made data (no Ray, no MLflow):
no text may fall outside the canvas (a cut title or colour-bar label), and a heatmap's
values must be readable on their cells (white on dark, black on light)."""

from __future__ import annotations

import inspect
import warnings

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

from orchestrator.report import analysis_figures, figures

LANGS = ["ar", "de", "en", "es", "ru", "sw", "zh", "hi", "fr", "ja"]
CALIBS = ["en", "sw", "zh", "en=0.333333,sw=0.333333,zh=0.333333"]
MODEL = "polyprune-demo-llama · mwanda lambda_var=0 lambda_prob=0.25 · sparsity 0.65"


def grid(rows, cols, lo=0.0, hi=1.0):
    n = rows * cols
    return [[lo + (hi - lo) * (i * cols + j) / max(n - 1, 1) for j in range(cols)] for i in range(rows)]


CASES = {
    "heatmap": lambda p: figures.heatmap(
        p, grid(3, 6, 0.0, 0.6), CALIBS[:3], ["en (2)", "sw (5)", "zh (1)", "de (7)", "ru (3)", "all"],
        title=f"kept share of language-specific neurons · {MODEL}", cbar="share of down-proj. weights kept",
        cmap="viridis", fmt="{:.3f}", best="max", xlabel="language (specific neurons)", ylabel="calibration",
        diagonal=[(0, 0), (1, 1), (2, 2)]),
    "heatmap, diverging, mixes": lambda p: figures.heatmap(
        p, grid(4, 11, 0.9, 1.3), CALIBS, LANGS + ["mean"], title=MODEL, cbar="perplexity / dense", center=1.0,
        fmt="{:.3f}", diagonal=[(0, 2)], partial=[(3, 2), (3, 5)], best="min", xlabel="evaluation language",
        ylabel="calibration"),
    "panels": lambda p: figures.panels(
        p, ["0.5", "0.6", "2:4", "0.7"], {f"ppl.{l}": {c: [10.0, 11.0, None, 14.0] for c in CALIBS} for l in LANGS[:5]},
        title=f"{MODEL}: ppl vs sparsity", ylabel="perplexity", logy=True),
    "depth_lines": lambda p: figures.depth_lines(
        p, list(range(8)), {f"{a} vs {b}": [0.8 + 0.01 * k for k in range(8)] for a in CALIBS for b in CALIBS[:2]},
        title=f"mask overlap by depth · {MODEL}"),
    "block_sparsity": lambda p: figures.block_sparsity(
        p, {s: [(c, [0.65] * 4, [0.6, 0.64, 0.66, 0.7]) for c in CALIBS] for s in ("uniform", "owl")},
        title=f"per-block sparsity · {MODEL}"),
    "history": lambda p: figures.history(
        p, list(range(24)), [11 - 0.01 * k for k in range(24)], metric="lmeval.belebele_swh_Latn.acc_norm",
        direction="minimize"),
    "pareto": lambda p: figures.pareto(
        p, [10 + k for k in range(6)], [20 - k * k for k in range(6)], [True, True, False, True, False, True],
        [f"#{k} {CALIBS[3]}" for k in range(6)], xmetric="ppl.sw", ymetric="ppl.mean"),
    "grouped_bars": lambda p: figures.grouped_bars(
        p, LANGS[:5] + ["mean"], {f"#{k} {c}": [1.0 + k, -2.0, 3.0, None, 0.5, 1.0] for k, c in enumerate(CALIBS)},
        title=f"best trial (minimize ppl.mean) vs baselines · {MODEL}", ylabel="perplexity change vs dense (%)"),
    "importances": lambda p: figures.importances(
        p, {"mix.en": 0.4, "lambda_prob": 0.3, "schedule": 0.2, "profile.offset.2": 0.1},
        title="parameter importances for lmeval.belebele_swh_Latn.acc_norm"),
    "valid_vs_test": lambda p: figures.valid_vs_test(
        p, [(10.7 + 0.01 * k, 11.3 + 0.012 * k, k < 4) for k in range(24)], metric="ppl.mean"),
    "subspace_bars": lambda p: analysis_figures.subspace_bars(
        p, LANGS[:5], CALIBS, {part: {c: {l: 0.1 for l in LANGS[:5]} for c in CALIBS} for part in ("shared", "specific")},
        {"shared": 0.004, "specific": 0.012}, title=f"where the drift lies · {MODEL}"),
}


@pytest.fixture
def drawn(monkeypatch):
    """Runs the real `save`, after recording what each figure would have cut and its cell texts."""
    seen = []
    real = figures.save

    def save(fig, path):
        cut = figures.outside(fig)
        cells = [(t.get_text(), t.get_color(), t.axes.images[0]) for ax in fig.axes for t in ax.texts if ax.images]
        grid = [ax for ax in fig.axes if any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())]
        seen.append({"path": path, "cut": cut, "cells": cells, "size": tuple(fig.get_size_inches()), "grid": grid})
        return real(fig, path)

    monkeypatch.setattr(figures, "save", save)
    return seen


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_text_outside_the_canvas(name, tmp_path, drawn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", figures.FigureLayoutWarning)
        path = CASES[name](tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000 and path == str(tmp_path / "f.png")
    assert len(drawn) == 1 and drawn[0]["cut"] == []
    assert plt.get_fignums() == []  # closed


def test_every_figure_function_is_covered():
    drawing = {n for n, f in inspect.getmembers(figures, inspect.isfunction)
               if f.__module__ == figures.__name__ and "save(fig, path)" in inspect.getsource(f)} - {"save"}
    assert drawing and drawing <= {n.split(",")[0] for n in CASES}


def test_heatmap_values_contrast_with_their_cells(tmp_path, drawn):
    CASES["heatmap"](tmp_path / "f.png")
    cells = drawn[0]["cells"]
    assert len(cells) == 18
    colours = {}
    for text, colour, im in cells:
        value = float(text)
        colours.setdefault(to_rgba(colour)[:3], []).append(value)
    # viridis runs from dark purple (low) to yellow (high): white on the low cells, black on the high ones
    assert max(colours[(1.0, 1.0, 1.0)]) < min(colours[(0.0, 0.0, 0.0)])
    assert min(colours[(1.0, 1.0, 1.0)]) == 0.0 and max(colours[(0.0, 0.0, 0.0)]) == pytest.approx(0.6)


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n.startswith("heatmap")])
def test_heatmaps_draw_no_grid_through_their_cells(name, tmp_path, drawn):
    """Even where a library switched on a style with grids (Optuna's plots use ggplot): ticks sit at the
    cells' centres, so a grid would cross every value (docs/report.png did)."""
    with plt.style.context("ggplot"):
        CASES[name](tmp_path / "f.png")
    assert drawn[0]["grid"] == []


def test_text_colour_picks_the_higher_contrast():
    assert figures.text_colour(to_rgba("#440154")) == "white"  # viridis' darkest
    assert figures.text_colour(to_rgba("#fde725")) == "black"  # viridis' lightest
    assert figures.text_colour((0.0, 0.0, 0.0, 1.0)) == "white" and figures.text_colour((1.0, 1.0, 1.0, 1.0)) == "black"


def test_a_cut_figure_is_caught_and_saved_whole(tmp_path):
    fig, axes = figures.figure(3, 2)
    axes[0, 0].set_title("a title far too long to fit a three-inch figure without being wrapped first " * 2)
    assert figures.outside(fig)
    with pytest.warns(figures.FigureLayoutWarning, match="outside the canvas"):
        figures.save(fig, tmp_path / "cut.png")
    from PIL import Image

    assert Image.open(tmp_path / "cut.png").size[0] > 3 * figures.DPI  # the tight box grew to hold the title
