"""Figures and CSVs of `polyprune analyze`, and the report section that shows them.

Per model x method x sparsity, values averaged over seeds (the captions say how many):
- kept share of each language's specific neurons (down-projection columns), calibration
  language x language, beside the share kept over all neurons;
- linear CKA between dense and pruned hidden states, block x language, one heatmap per
  calibration language, and the same by depth as lines;
- the share of the dense-to-pruned change lying along the shared direction and inside the
  language-specific subspace, per calibration and language, with their chance levels.
`index.json` lists the figures with their captions; the report reads it from the sweep's
parent run (`analysis/`), so a report shows the section only where an analysis exists.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

from .record import mean, order_calibs, slug, sparsity_value, write_csv

INDEX = "index.json"
SECTION = "Inside the pruned model (polyprune analyze)"


def table(path: Path, rows: list[dict]) -> None:
    header = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(path, header, [[r.get(k, "") for k in header] for r in rows])


def subspace_bars(path, langs, calibs, shares: dict, chance: dict, *, title) -> str:
    """Two panels (shared direction, specific subspace): bars per language, one per calibration;
    a dashed line at each panel's chance level."""
    import numpy as np

    from . import figures as fig

    width = 4.0 + 1.6 * len(langs) * max(1, len(calibs) / 3)
    f, axes = fig.figure(width, 3.8, 1, 2)
    bar = 0.8 / max(len(calibs), 1)
    for ax, part in zip(axes.flat, ("shared", "specific")):
        for k, c in enumerate(calibs):
            pos = [g + (k - (len(calibs) - 1) / 2) * bar for g in range(len(langs))]
            ax.bar(pos, [np.nan if shares[part][c][l] is None else shares[part][c][l] for l in langs], bar, label=c)
        if chance.get(part) is not None:
            ax.axhline(chance[part], color="black", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(langs)), langs)
        ax.set_xlabel("evaluation language")
        ax.set_ylabel(fig.wrap(f"share of drift energy ({part})", 2.8))
        ax.set_title("shared direction" if part == "shared" else "language-specific subspace", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(f, axes.flat[0], title="calibration")
    f.suptitle(fig.wrap(title, width - 1.8), fontsize=10)
    return fig.save(f, path)


def write_outputs(out: Path, rows: dict, langs: list[str]) -> list[str]:
    """All CSVs and figures into `out`, plus index.json (figure, caption) for the report."""
    from . import figures as fig

    table(out / "analysis_runs.csv", rows["runs"])
    table(out / "analysis_kept.csv", rows["kept"])
    table(out / "analysis_layers.csv", rows["layers"])
    table(out / "analysis_neurons.csv", rows["neurons"])
    index = []
    groups = defaultdict(list)
    for r in rows["layers"] + rows["kept"]:
        groups[(r["model"], r["variant"], r["sparsity"])].append(r)
    for (model, variant, sp), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], sparsity_value(kv[0][2]))):
        name, title = slug("analysis", model, variant, sp), f"{model} · {variant} · sparsity {sp}"
        calibs = order_calibs({r["calib"] for r in rs}, langs)
        seeds = len({r["seed"] for r in rs})
        over = f"mean over {seeds} seed(s)"
        kept = [r for r in rs if "down_kept" in r]
        cols = langs + ["all"]
        grid = [[mean([r["down_kept"] for r in kept if r["calib"] == c and r["lang"] == l]) for l in cols] for c in calibs]
        counts = {l: next((r["neurons"] for r in kept if r["lang"] == l), None) for l in langs}
        write_csv(out / f"{name}_kept.csv", ["calib"] + cols, [[c] + row for c, row in zip(calibs, grid)])
        png = fig.heatmap(out / f"{name}_kept.png", grid, calibs, [f"{l} ({counts[l]})" for l in langs] + ["all"],
                          title=f"kept share of language-specific neurons · {title}", cbar="share of down-proj. weights kept",
                          cmap="viridis", fmt="{:.3f}", best="max", xlabel="language (specific neurons)", ylabel="calibration",
                          diagonal=[(i, j) for i, c in enumerate(calibs) for j, l in enumerate(langs) if l == c])
        index.append((png, f"Share of the down-projection weights of each language's specific neurons (LAPE, Tang et al. 2024; "
                           f"count in brackets) that the run kept; 'all': every FFN neuron (the run's density there). {over}. "
                           "Framed: calibrated in that language; bold: best calibration per column."))
        layers = [r for r in rs if "cka" in r]
        blocks = sorted({r["layer"] for r in layers})
        cka = {c: {l: [mean([r["cka"] for r in layers if r["calib"] == c and r["lang"] == l and r["layer"] == b]) for b in blocks]
                   for l in langs} for c in calibs}
        for c in calibs:
            grid = [[cka[c][l][k] for l in langs] for k in range(len(blocks))]
            png = fig.heatmap(out / f"{name}_cka_{slug(c)}.png", grid, [str(b) for b in blocks], langs, cmap="viridis",
                              title=f"CKA dense vs pruned, calibrated in {c} · {title}", cbar="linear CKA", fmt="{:.3f}",
                              best=None, xlabel="evaluation language", ylabel="block (depth)")
            index.append((png, f"Linear CKA (Kornblith et al. 2019) between the dense and the pruned model's block outputs on the "
                               f"same held-out tokens, calibrated in {c}; 1 = unchanged up to rotation and scale. {over}."))
        png = fig.panels(out / f"{name}_cka_depth.png", [str(b) for b in blocks],
                         {l: {c: cka[c][l] for c in calibs} for l in langs}, title=f"CKA by depth · {title}", ylabel="linear CKA")
        index.append((png, f"The same CKA by depth, one panel per evaluation language, one line per calibration. {over}."))
        shares = {p: {c: {l: mean([r[f"{p}_share"] for r in layers if r["calib"] == c and r["lang"] == l]) for l in langs}
                      for c in calibs} for p in ("shared", "specific")}
        chance = {p: mean([r[f"{p}_chance"] for r in layers]) for p in ("shared", "specific")}
        write_csv(out / f"{name}_subspace.csv", ["part", "calib"] + langs + ["chance"],
                  [[p, c] + [shares[p][c][l] for l in langs] + [chance[p]] for p in shares for c in calibs])
        png = subspace_bars(out / f"{name}_subspace.png", langs, calibs, shares, chance, title=f"where the drift lies · {title}")
        index.append((png, "Share of the energy of the dense-to-pruned change of each language's hidden states lying along the "
                           "shared (language-agnostic) direction and inside the language-specific subspace of the dense "
                           f"model's language means (in the style of Xie et al. 2022), mean over blocks; dashed: chance. {over}."))
    (out / INDEX).write_text(json.dumps({"section": SECTION, "figures": [[Path(p).name, c] for p, c in index]}, indent=1))
    return sorted(p.name for p in out.iterdir())


def report_items(cl, parent, out: Path, tmp: Path) -> list:
    """The report's section from the parent run's `analysis/` artifacts; [] when no analysis was logged."""
    if parent is None:
        return []
    names = {a.path for a in cl.list_artifacts(parent.info.run_id, "analysis")}
    if f"analysis/{INDEX}" not in names:
        return []
    local = Path(cl.download_artifacts(parent.info.run_id, "analysis", str(tmp / "analysis")))
    index = json.loads((local / INDEX).read_text())
    for f in local.iterdir():
        if f.suffix in (".png", ".csv"):
            shutil.copy2(f, out / f.name)
    items = [("img", str(out / png), caption) for png, caption in index["figures"] if (out / png).exists()]
    return [(index["section"], items)] if items else []
