"""The MLflow record of a search (SPEC "MLflow record"). Only the driver calls this.

experiment = search name; one parent run per study (tags `polyprune.role=search`,
`polyprune.sweep`, `polyprune.study`), reused on every rerun; one child run per
trial (tags `polyprune.trial`, `polyprune.study`, `polyprune.sweep`,
`polyprune.cell_id`). Params, metrics and artifacts of a trial are a sweep cell's
(tracking.cell_params / finish_cell), plus the trial's raw Optuna parameters as
`optuna.<name>`. At the end the parent gets the best trial(s), the baselines and
Optuna's figures.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

from . import tracking

TRIAL, STUDY, BASELINE = "polyprune.trial", "polyprune.study", "polyprune.baseline"


class SearchRecord:
    def __init__(self, uri: str, name: str, tags: dict[str, str], params: dict[str, Any], files: dict[str, bytes]):
        self.cl = tracking.client(uri, create=True)
        self.exp = tracking.experiment_id(self.cl, name, uri, create=True)  # creates the schema here, once
        self.name, self.tags = name, tags
        self.parent = self._begin(params)
        tracking.log_artifacts(self.cl, self.parent, files)

    def _begin(self, params: dict[str, Any]) -> str:
        """The study's parent run; trial runs a dead driver left RUNNING end KILLED first."""
        cl = self.cl
        mine = [r for r in tracking.all_runs(cl, self.exp, f"tags.`{tracking.SWEEP}` = '{self.name}'")]
        for r in mine:
            if TRIAL in r.data.tags and r.info.status in ("RUNNING", "SCHEDULED"):
                tracking.log_tags(cl, r.info.run_id, {tracking.ERROR: "the driver stopped while this trial ran (found RUNNING on resume)"})
                cl.set_terminated(r.info.run_id, "KILLED")
        parents = [r for r in mine if r.data.tags.get(tracking.ROLE) == "search"]
        if parents:
            run_id = min(parents, key=lambda r: r.info.start_time).info.run_id
            cl.update_run(run_id, status="RUNNING")
        else:
            run_id = cl.create_run(self.exp, run_name=self.name, tags={tracking.ROLE: "search", tracking.SWEEP: self.name,
                                                                       STUDY: self.name}).info.run_id
            tracking.log_params(cl, run_id, params)
        tracking.log_tags(cl, run_id, {**self.tags, tracking.DRIVER: f"{socket.gethostname()}:{os.getpid()}"})
        return run_id

    def start_trial(self, number: int, cell, optuna_params: dict[str, Any], baseline: str | None) -> str:
        tags = {**self.tags, tracking.PARENT: self.parent, tracking.SWEEP: self.name, STUDY: self.name,
                TRIAL: str(number), tracking.CELL: cell.cell_id, "polyprune.kind": "trial"}
        if baseline:
            tags[BASELINE] = baseline
        name = f"trial {number}" + (f" ({baseline})" if baseline else "")
        run_id = self.cl.create_run(self.exp, run_name=name, tags=tags).info.run_id
        params = tracking.cell_params(cell)
        params.update({f"optuna.{k}": v for k, v in optuna_params.items()})
        tracking.log_params(self.cl, run_id, params)
        return run_id

    def finish_trial(self, run_id: str, out: dict[str, Any]) -> None:
        tracking.finish_cell(self.cl, run_id, out)

    def fail_trial(self, run_id: str, error: str, detail: str = "", status: str = "FAILED", tags: dict | None = None) -> None:
        tracking.fail_cell(self.cl, run_id, error, detail, status, tags)

    def end(self, study, summary: dict[str, Any], metrics: list[str], status: str) -> None:
        """Best trials, baselines and figures on the parent; then its status."""
        files = {"best_trials.json": (json.dumps(summary, indent=2, default=str) + "\n").encode()}
        files.update(figures(study, metrics))
        tracking.log_artifacts(self.cl, self.parent, files)
        m: dict[str, float] = {"trials.complete": summary["n_complete"], "trials.failed": summary["n_failed"]}
        if len(metrics) == 1 and summary["best"]:
            m[f"best.{metrics[0]}"] = summary["best"][0]["values"][0]
            m["best.trial"] = summary["best"][0]["number"]
        for b in summary["baselines"]:
            if b.get("values"):
                m.update({f"baseline.{b['baseline']}.{k}": v for k, v in zip(metrics, b["values"])})
        tracking.log_metrics(self.cl, self.parent, m)
        tracking.log_tags(self.cl, self.parent, {"polyprune.best_trials": ",".join(str(b["number"]) for b in summary["best"])})
        self.cl.set_terminated(self.parent, status)


def figures(study, metrics: list[str]) -> dict[str, bytes]:
    """Optuna's matplotlib figures as PNG bytes: optimization history (per objective),
    Pareto front (several objectives), parameter importances (per objective). A figure
    that cannot be drawn (too few trials) is skipped, its reason in figures.txt."""
    import matplotlib

    matplotlib.use("Agg")  # the driver may have no display
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    out: dict[str, bytes] = {}
    notes: list[str] = []
    multi = len(metrics) > 1
    jobs = []
    for i, m in enumerate(metrics):
        target = (lambda t, i=i: t.values[i]) if multi else None
        tag = f"_{_safe(m)}" if multi else ""
        jobs.append((f"figures/optimization_history{tag}.png",
                     lambda target=target, m=m: ovm.plot_optimization_history(study, target=target, target_name=m)))
        if len(complete) >= 2:
            jobs.append((f"figures/param_importances{tag}.png",
                         lambda target=target, m=m: ovm.plot_param_importances(study, target=target, target_name=m)))
        else:
            notes.append(f"param_importances{tag}: needs at least 2 complete trials")
    if multi and len(metrics) <= 3:
        jobs.append(("figures/pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=metrics)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is marked experimental
        for name, draw in jobs:
            try:
                ax = draw()
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                with tempfile.TemporaryDirectory() as tmp:
                    fig.savefig(Path(tmp) / "f.png", dpi=110, bbox_inches="tight")
                    out[name] = (Path(tmp) / "f.png").read_bytes()
                plt.close(fig)
            except Exception as e:  # a figure is a convenience; never fail the search over it
                notes.append(f"{Path(name).stem}: {type(e).__name__}: {e}".splitlines()[0])
    if notes:
        out["figures/figures.txt"] = ("\n".join(notes) + "\n").encode()
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
