"""The confirmation's test stage (docs/search.md, "Confirmation"): the selection's winner and every
baseline run on the test seeds, fresh calibration draws that chose nothing, each evaluated on valid and
test (`cells.full_evaluation`, whatever a trial measures); only these runs make the verdict
(`confirm.verdict`): per baseline the winner's mean difference on the first objective's test value, its
interval over the test seeds and the evaluation windows (read from each run's per-window losses,
`losses.json`), the paired t-test's p and Holm's adjustment over the baselines.

The runs are tagged `polyprune.kind=confirm`, `polyprune.confirm` (the winner's `trial N` or the
baseline's label), `polyprune.confirm_seed` and `polyprune.confirm_phase=test`; a rerun finds them by
cell id, so a search stopped between the phases finishes exactly what is missing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..tracking import no_progress_bars
from ..names import LOSSES_FILE
from .confirm import verdict
from .context import quiet
from .cells import varied
from .reruns import KIND_CONFIRM, FixedRuns, Reruns


class TestSeeds:
    """The stage (docs/extending.md), composed with the stages it reads: the selection (its winner)
    and the baselines (their cells)."""

    __test__ = False  # a stage, not a pytest class

    def __init__(self, ctx, selection, baselines):
        self.ctx, self.selection, self.baselines = ctx, selection, baselines
        self.seeds = ctx.cfg.confirm.test_seeds
        self.reruns: Reruns | None = None
        self.runs = FixedRuns(ctx, KIND_CONFIRM, [])  # its runs, once planned (`reruns.runs`)
        self.entries: list[tuple[str, str, Any]] = []  # (label, role, base cell)

    def pending(self) -> bool:
        if self.reruns is None:
            win = self.selection.winner()
            if win is not None and self.baselines.all:  # nothing to compare with: no test phase
                # the winner's cell measures test here whatever its trials measured (`test_every_trial`)
                self.entries = [(win["label"], "winner", varied(win["cell"], eval=self.ctx.ev_full))]
                self.entries += [(b.label, "baseline", self.baselines.cells[b.label]) for b in self.baselines.all]
            self.reruns = Reruns(self.ctx, "test", [(label, cell) for label, _, cell in self.entries], self.seeds)
            self.runs = self.reruns.runs
        return bool(self.runs.todo)

    def run(self):
        return self.runs.run(f"search {self.ctx.cfg.name}: confirmation, test: {len(self.runs.todo)} runs to go ({self.entries[0][0]} "
                             f"and {len(self.entries) - 1} baselines x test seeds {', '.join(map(str, self.seeds))})")

    def stop(self, status: str, why: str) -> None:
        self.runs.stop(status, why)

    def has_failures(self) -> bool:
        return self.runs.has_failures()

    def finish(self, summary: dict[str, Any]) -> None:
        """The test phase and the verdict into summary["confirmation"] (a stage not reached says nothing)."""
        c = summary.get("confirmation")
        if self.reruns is None or not self.entries or c is None:
            return
        metric, r = self.ctx.metrics[0], self.reruns
        tested = [{"label": label, "role": role, "valid": r.values(label, metric), "test": r.values(label, f"test.{metric}"),
                   "runs": sorted(x["run_id"] for x in r.of(label).values())} for label, role, _ in self.entries]
        losses = quiet(lambda: self.losses(metric)) if metric.startswith("ppl.") else None
        c.update(verdict(tested, metric, c["direction"], self.seeds, c["level"], losses))
        log_word = "log " if metric.startswith("ppl.") else ""
        c.update({"tested": tested, "test": f"paired t-test over {len(self.seeds)} test seeds on {log_word}test {metric}"
                  + (f"; {100 * (1 - c['level']):g}% interval: bootstrap over the test seeds and the evaluation windows"
                     if losses else "") + f"; Holm over {len(tested) - 1} baselines"})
        c["cost"]["test"] = r.cost()

    def losses(self, metric: str) -> dict[str, list] | None:
        """label -> per test seed {lang: (nll per window, tokens per window)} of the test split, for
        the languages `metric` averages; a label with a run lacking the file is left out."""
        cl = self.ctx.rec.cl
        langs = None if metric == "ppl.mean" else [metric[len("ppl."):]]
        out = {}
        with no_progress_bars(), tempfile.TemporaryDirectory(prefix="polyprune-losses-") as tmp:
            for i, (label, _, _) in enumerate(self.entries):
                runs = self.reruns.of(label)
                got = [window_losses(cl, runs[s].get("model_id"), Path(tmp) / f"{i}-{s}", langs) if s in runs else None
                       for s in self.seeds]
                if all(g for g in got):
                    out[label] = got
        return out


def window_losses(cl, model_id: str | None, dest: Path, langs: list[str] | None) -> dict | None:
    """A run's test-split losses per window ({lang: (nll, tokens)}) from its logged model's `losses.json`."""
    from ..models import artifact_repo

    if not model_id:
        return None
    dest.mkdir(parents=True)
    try:
        location = cl.get_logged_model(model_id).artifact_location
        path = artifact_repo(location, cl.tracking_uri).download_artifacts(LOSSES_FILE, str(dest))
    except Exception:  # a run from before per-window losses were logged
        return None
    test = json.loads(Path(path).read_text()).get("test") or {}
    return {lang: (v["nll"], v["tokens"]) for lang, v in test.items() if langs is None or lang in langs} or None
