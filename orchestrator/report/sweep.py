"""The sweep part of `polyprune report`: per model x method x sparsity, calibration x
evaluation heatmaps, metric vs sparsity curves, mask overlap and per-block sparsity.
Each function writes its PNG / CSV files into the report folder and returns
(kind, png, caption) items for the HTML page."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .record import (Run, acc_columns, eval_languages, fetch, mean, mix_languages, order_calibs, slug, sparsity_value,
                     task_language, write_csv)


def sweep_sections(cl, runs: list[Run], out: Path, tmp: Path, overlap: bool) -> list:
    from . import figures as fig

    sections = []
    dense = {}
    for r in runs:
        if r.dense:
            dense[r.model] = r  # latest dense run of a model is its baseline
    pruned = [r for r in runs if not r.dense and r.trial is None and r.baseline is None]  # a search's runs: its sections
    groups = defaultdict(list)
    for r in pruned:
        groups[(r.model, r.variant, r.params.get("sparsity", "?"))].append(r)
    langs_all = eval_languages(runs)
    for (model, variant, sp), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], sparsity_value(kv[0][2]))):
        items = []
        base = dense.get(model)
        calibs = order_calibs({r.calib for r in rs}, langs_all)
        langs = eval_languages(rs)
        name = slug(model, variant, sp)
        title = f"{model} · {variant} · sparsity {sp}"
        cols = [("ppl", [f"ppl.{l}" for l in langs] + (["ppl.mean"] if langs else []), langs + ["mean"], "min"),
                ("acc", acc_columns(rs), None, "max")]
        for kind, keys, labels, best in cols:
            if not keys:
                continue
            labels = labels or [k.split(".")[1] for k in keys]
            absolute = [[mean([r.metrics.get(k) for r in rs if r.calib == c]) for k in keys] for c in calibs]
            write_csv(out / f"{kind}_{name}.csv", ["calib"] + labels, [[c] + row for c, row in zip(calibs, absolute)])
            shown, cbar, center, fmt = absolute, kind, None, "{:.3g}"
            if base is not None:  # ppl: ratio to dense (1 = no loss); accuracy: difference in points
                ref = [base.metrics.get(k) for k in keys]
                if kind == "ppl":
                    shown = [[v / b if b else float("nan") for v, b in zip(row, ref)] for row in absolute]
                    cbar, center, fmt = "perplexity / dense", 1.0, "{:.3f}"  # ratios near 1: .3g would print 1
                else:
                    shown = [[v - b if b is not None else float("nan") for v, b in zip(row, ref)] for row in absolute]
                    cbar, center, fmt = "accuracy - dense", 0.0, "{:+.3f}"
                write_csv(out / f"{kind}_rel_{name}.csv", ["calib"] + labels, [[c] + row for c, row in zip(calibs, shown)])
            tlangs = [l if kind == "ppl" else task_language(l, set(langs_all) | set(calibs)) for l in labels]
            diag = [(i, j) for i, c in enumerate(calibs) for j, l in enumerate(tlangs) if l == c]
            part = [(i, j) for i, c in enumerate(calibs) if "," in c for j, l in enumerate(tlangs) if l in mix_languages(c)]
            png = fig.heatmap(out / f"{kind}_{name}.png", shown, calibs, labels, title=title, cbar=cbar, center=center, fmt=fmt,
                              cmap="RdYlGn_r" if kind == "ppl" else "RdYlGn", diagonal=diag, partial=part, best=best,
                              xlabel="evaluation language" if kind == "ppl" else "task", ylabel="calibration")
            what = "Perplexity" if kind == "ppl" else "lm-eval accuracy"
            rel = ("relative to the dense baseline" if base is not None else "absolute (no dense baseline in this record)")
            items.append(("img", png, f"{what}, {rel}; mean over {len({r.seed for r in rs})} seed(s). Framed: calibrated in the "
                                      f"evaluated language (dashed: a mix containing it); bold: best calibration per column."))
        if overlap:
            items += overlap_items(cl, rs, calibs, out, tmp, name, title)
        items += block_items(cl, rs, calibs, out, tmp, name, title)
        sections.append((title, items))
    sections += curve_sections(pruned, dense, langs_all, out)
    return sections


def curve_sections(pruned, dense, langs_all, out) -> list:
    """Metric vs sparsity per calibration language, one figure per model x method variant."""
    from . import figures as fig

    by = defaultdict(list)
    for r in pruned:
        by[(r.model, r.variant)].append(r)
    items = []
    for (model, variant), rs in sorted(by.items()):
        sps = sorted({r.params.get("sparsity") for r in rs}, key=sparsity_value)
        base = dense.get(model)
        if len(sps) + (base is not None) < 2:
            continue  # one point is not a curve
        xs = (["dense"] if base else []) + sps
        calibs = order_calibs({r.calib for r in rs}, langs_all)
        langs = eval_languages(rs)
        for kind, keys in (("ppl", [f"ppl.{l}" for l in langs] + ["ppl.mean"]), ("acc", acc_columns(rs))):
            if not keys or not any(k in r.metrics for r in rs for k in keys):
                continue
            panels = {}
            for k in keys:
                panels[k] = {c: ([base.metrics.get(k)] if base else []) +
                             [mean([r.metrics.get(k) for r in rs if r.calib == c and r.params.get("sparsity") == s]) for s in sps]
                             for c in calibs}
            name = slug("curve", kind, model, variant)
            png = fig.panels(out / f"{name}.png", xs, panels, title=f"{model} · {variant}: {kind} vs sparsity",
                             ylabel=kind, logy=kind == "ppl")
            items.append(("img", png, f"{'Perplexity (log scale)' if kind == 'ppl' else 'Accuracy'} vs sparsity, one line per calibration."))
    return [("Metrics vs sparsity", items)] if items else []


def overlap_items(cl, rs, calibs, out, tmp, name, title) -> list:
    """Jaccard of the pruned sets between calibrations (seed = the smallest one present). The
    diagonal is the overlap between two seeds of the same calibration when there are two:
    the noise floor the off-diagonal values should be read against."""
    from tasks.analysis.overlap import jaccard_by, jaccard_total, mask_overlap

    from . import figures as fig

    by_calib = defaultdict(list)
    for r in sorted(rs, key=lambda r: r.seed):
        by_calib[r.calib].append(r)
    if len(by_calib) < 2:
        return []
    pick = {c: by_calib[c][0] for c in calibs}
    n = len(calibs)
    matrix = [[float("nan")] * n for _ in range(n)]
    rows, depth, kinds = [], {}, defaultdict(list)
    seeds_diag = False
    for i, a in enumerate(calibs):
        for j, b in enumerate(calibs):
            if j < i:
                matrix[i][j] = matrix[j][i]
                continue
            ra, rb = (pick[a], by_calib[a][1]) if i == j and len(by_calib[a]) > 1 else (pick[a], pick[b])
            if ra is rb:
                matrix[i][j] = 1.0
                continue
            seeds_diag |= i == j
            ov = mask_overlap(fetch(cl, ra, "masks.safetensors", tmp), fetch(cl, rb, "masks.safetensors", tmp))
            matrix[i][j] = jaccard_total(ov)
            pair = f"{a} | {b}" if i != j else f"{a} seeds {ra.seed}|{rb.seed}"
            rows += [[pair, x["block"], x["linear"], x["jaccard"], x["intersection"], x["union"]] for x in ov]
            if i != j:
                depth[pair] = jaccard_by(ov, "block")
                for (blk, lin), v in jaccard_by(ov, ("block", "linear")).items():
                    kinds[(lin, blk)].append(v)
    write_csv(out / f"overlap_{name}.csv", ["calib"] + calibs, [[c] + row for c, row in zip(calibs, matrix)])
    write_csv(out / f"overlap_blocks_{name}.csv", ["pair", "block", "linear", "jaccard", "intersection", "union"], rows)
    items = [("img", fig.heatmap(out / f"overlap_{name}.png", matrix, calibs, calibs, title=f"mask overlap · {title}",
                                 cbar="Jaccard of pruned sets", cmap="viridis", best=None, fmt="{:.3f}"),
              "Jaccard similarity of the pruned weights between calibrations (whole model). " +
              ("Diagonal: the same calibration with two seeds (noise floor)." if seeds_diag else "Diagonal: 1 (one seed only)."))]
    blocks = sorted({b for d in depth.values() for b in d})
    items.append(("img", fig.depth_lines(out / f"overlap_depth_{name}.png", blocks,
                                         {p: [d.get(b) for b in blocks] for p, d in depth.items()}, title=f"mask overlap by depth · {title}"),
                  "Per-block Jaccard for each pair of calibrations: where the languages' masks diverge."))
    lins = sorted({lin for lin, _ in kinds}, key=lambda s: (s not in ("q_proj", "k_proj", "v_proj", "o_proj"), s))
    grid = [[mean(kinds.get((lin, b), [])) for b in blocks] for lin in lins]
    items.append(("img", fig.heatmap(out / f"overlap_linear_{name}.png", grid, lins, [str(b) for b in blocks], cmap="viridis",
                                     title=f"mean pairwise overlap by linear type · {title}", cbar="Jaccard", fmt="{:.2f}",
                                     best=None, xlabel="block", ylabel="linear"),
                  "Mean over calibration pairs of the Jaccard per block and linear type."))
    return items


def block_items(cl, rs, calibs, out, tmp, name, title) -> list:
    """Target vs achieved sparsity per block, a panel per schedule (from each run's result.json)."""
    from . import figures as fig

    panels, rows = defaultdict(list), []
    seen = set()
    for r in sorted(rs, key=lambda r: (calibs.index(r.calib), r.seed)):
        key = (r.params.get("schedule", "uniform"), r.calib)
        if key in seen:
            continue  # one seed per calibration keeps the panel readable
        seen.add(key)
        path = fetch(cl, r, "result.json", tmp)
        if path is None:
            continue
        per = json.loads(Path(path).read_text()).get("sparsity_per_block") or {}
        if per.get("actual"):
            panels[key[0]].append((r.calib, per["target"], per["actual"]))
            rows += [[key[0], r.calib, r.seed, b, t, a] for b, (t, a) in enumerate(zip(per["target"], per["actual"]))]
    if not panels:
        return []
    write_csv(out / f"blocks_{name}.csv", ["schedule", "calib", "seed", "block", "target", "actual"], rows)
    return [("img", fig.block_sparsity(out / f"blocks_{name}.png", dict(panels), title=f"per-block sparsity · {title}"),
             "Target (dashed) and achieved (solid) sparsity per block, per schedule.")]


