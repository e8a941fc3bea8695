"""The confirmation part of `polyprune report` (a search whose parent run holds
`confirmation.json`, see docs/search.md "Confirmation"): the selection (each candidate's mean valid
over the selection seeds), a table of the winner against each baseline on the test seeds (means and
sds, the difference, its interval, p, Holm's p, verdict) and a figure of every test-phase run's value
per test seed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .record import slug, write_csv


def read(cl, run_id: str | None) -> dict | None:
    """A search parent run's confirmation.json, or None (no confirmation, or an older record)."""
    from ..tracking import no_progress_bars

    if run_id is None:
        return None
    try:
        with no_progress_bars(), tempfile.TemporaryDirectory() as tmp:  # one small file: no bar in a status view
            return json.loads(Path(cl.download_artifacts(run_id, "confirmation.json", tmp)).read_text())
    except Exception:  # no such artifact: the search ran without a confirmation
        return None


def confirmation_sections(cl, parent, out: Path) -> list:
    c = read(cl, parent.info.run_id if parent is not None else None)
    if not c or "test_seeds" not in c or not c.get("candidates"):  # none, or a record from before the two phases
        return []
    m = c["metric"]
    sel = write_csv(out / "confirmation_selection.csv", ["candidate", "winner", f"valid {m} mean", "sd", "selection seeds"],
                    [[e["label"], e["label"] == c["winner"], *(e.get("valid_mean_sd") or ["", ""]),
                      " ".join(str(s) for s in sorted(e.get("valid", {}), key=int))] for e in c["candidates"]])
    items = [("table", str(sel), f"Selection: the top {len(c['candidates'])} trials on valid re-run on seeds "
                                 f"{', '.join(map(str, c['selection_seeds']))}; the winner has the best mean valid {m}.")]
    if c.get("tested"):
        vs = {v["baseline"]: v for v in c.get("vs") or []}
        header = ["run on the test seeds", "role", f"valid {m} mean", "sd", f"test {m} mean", "sd",
                  "winner's diff %", "interval low %", "interval high %", "p", "Holm p", "verdict"]
        rows = []
        for e in c["tested"]:
            v, t, r = e.get("valid_mean_sd") or ["", ""], e.get("test_mean_sd") or ["", ""], vs.get(e["label"], {})
            rows.append([e["label"], e.get("role", ""), v[0], v[1], t[0], t[1], r.get("diff", ""), r.get("low", ""),
                         r.get("high", ""), r.get("p", ""), r.get("p_holm", ""), r.get("verdict", "")])
        table = write_csv(out / "confirmation.csv", header, rows)
        caption = (f"{c['test']} (level {c['level']:g}): the winner, chosen on the selection seeds, against every baseline "
                   f"on test seeds {', '.join(map(str, c['test_seeds']))}, which chose nothing; the difference is the "
                   f"winner's minus the baseline's (negative: the winner is better).")
        items += [("table", str(table), caption),
                  ("img", per_seed(out / f"confirmation_test_{slug(m)}.png", c), f"Test {m} per test seed of the winner and every baseline.")]
    return [("Confirmation", items)]


def per_seed(path: Path, c: dict) -> str:
    """One column per run entry (the winner, then the baselines): its test value at each test seed (a line joins a seed's points)."""
    from . import figures as fig

    entries = c["tested"]
    labels = [e["label"] for e in entries]
    f, axes = fig.figure(max(5.0, 1.1 * len(labels) + 2), 3.8)
    ax = axes[0][0]
    for i, s in enumerate(c["test_seeds"]):
        ys = [e["test"].get(str(s), e["test"].get(s)) for e in entries]
        ax.plot(range(len(labels)), ys, marker="o", lw=0.8, alpha=0.8, label=f"seed {s}", color=f"C{i % 10}")
    for j, e in enumerate(entries):
        if e.get("test_mean_sd"):
            ax.hlines(e["test_mean_sd"][0], j - 0.3, j + 0.3, color="black", lw=2)
    ax.axvspan(0.5, len(labels) - 0.5, color="tab:orange", alpha=0.12, lw=0, zorder=0, label="baselines")
    ax.set_xticks(range(len(labels)), [("winner\n" if e.get("role") == "winner" else "") + e["label"] for e in entries], fontsize=8)
    ax.set_ylabel(f"test {c['metric']}")
    ax.set_title(fig.wrap(f"confirmation: test {c['metric']} per test seed (bar: mean)", 6), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    return fig.save(f, path)
