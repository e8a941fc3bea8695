"""The confirmation part of `polyprune report` (a search whose parent run holds
`confirmation.json`, see docs/search.md "Confirmation"): a table of the winner against
each baseline (means and sds over the seeds, the paired difference, p, verdict) and a figure
of every re-run trial's and baseline's test value per seed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .record import slug, write_csv


def read(cl, run_id: str | None) -> dict | None:
    """A search parent run's confirmation.json, or None (no confirmation, or an older record)."""
    import os

    if run_id is None:
        return None
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar in a status view
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(cl.download_artifacts(run_id, "confirmation.json", tmp)).read_text())
    except Exception:  # no such artifact: the search ran without a confirmation
        return None
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def confirmation_sections(cl, parent, out: Path) -> list:
    c = read(cl, parent.info.run_id if parent is not None else None)
    if not c or not c.get("candidates"):
        return []
    m, seeds = c["metric"], c["seeds"]
    entries = c["candidates"] + c["baselines"]
    header = ["re-run", "role", f"valid {m} mean", "sd", f"test {m} mean", "sd", "diff vs winner's test %", "p", "verdict"]
    vs = {v["baseline"]: v for v in c["vs"]}
    rows = []
    for e in entries:
        v, t = e.get("valid_mean_sd") or ["", ""], e.get("test_mean_sd") or ["", ""]
        role = "winner" if e["label"] == c["winner"] else "baseline" if e in c["baselines"] else "candidate"
        r = vs.get(e["label"])
        # the difference is the winner's minus the baseline's, so it reads as the winner's gain
        rows.append([e["label"], role, v[0], v[1], t[0], t[1], r["diff"] if r else "", r["p"] if r else "", r["verdict"] if r else ""])
    table = write_csv(out / "confirmation.csv", header, rows)
    path = per_seed(out / f"confirmation_test_{slug(m)}.png", c)
    caption = (f"{c['test']} (level {c['level']:g}); the winner, chosen on mean valid {m} over seeds "
               f"{', '.join(map(str, seeds))}, against every baseline; the search's own seed is not among them.")
    return [("Confirmation", [("table", str(table), caption),
                              ("img", path, f"Test {m} of every re-run trial and baseline, per confirmation seed.")])]


def per_seed(path: Path, c: dict) -> str:
    """One column per re-run trial or baseline: its test value at each seed (a line joins a seed's points)."""
    from . import figures as fig

    entries = c["candidates"] + c["baselines"]
    labels = [e["label"] for e in entries]
    f, axes = fig.figure(max(5.0, 1.1 * len(labels) + 2), 3.8)
    ax = axes[0][0]
    for i, s in enumerate(c["seeds"]):
        ys = [e["test"].get(str(s), e["test"].get(s)) for e in entries]
        ax.plot(range(len(labels)), ys, marker="o", lw=0.8, alpha=0.8, label=f"seed {s}", color=f"C{i}")
    for j, e in enumerate(entries):
        if e.get("test_mean_sd"):
            ax.hlines(e["test_mean_sd"][0], j - 0.3, j + 0.3, color="black", lw=2)
    n_c = len(c["candidates"])
    ax.axvspan(n_c - 0.5, len(labels) - 0.5, color="tab:orange", alpha=0.12, lw=0, zorder=0, label="baselines")
    ax.set_xticks(range(len(labels)), [("winner\n" if l == c["winner"] else "") + l for l in labels], fontsize=8)
    ax.set_ylabel(f"test {c['metric']}")
    ax.set_title(fig.wrap(f"confirmation: test {c['metric']} per seed (bar: mean)", 6), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    return fig.save(f, path)
