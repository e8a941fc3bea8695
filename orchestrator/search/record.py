"""The MLflow record of a search (docs/record.md). Only the driver calls this.

experiment = search name; one parent run per study (tags `polyprune.role=search`,
`polyprune.sweep`, `polyprune.study`), reused on every rerun; one child run per
trial (tags `polyprune.trial`, `polyprune.study`, `polyprune.sweep`,
`polyprune.cell_id`). Params, metrics and artifacts of a trial are a sweep cell's
(tracking.cell_params / finish_cell), plus the trial's raw Optuna parameters as
`optuna.<name>`; each trial's pruned model is a LoggedModel like a cell's (the baselines' and the
confirmation's runs are recorded by their stages, `context.SearchContext.recorder`). At the end the
parent gets the summary the stages made: the best trial(s), the baselines, the confirmation and
Optuna's figures.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .. import models, tracking
from ..engine.record import attach_model
from ..stores import shown

from ..names import BASELINE, BEST_TRIALS, CONFIRMED, RUN_KIND, RUNG, METRIC, SCREENED, SPLIT, STUDY, SWEEP, TEST_VALUE, TRIAL, VALUE
from .baselines import metric_key
from .confirm import metrics as confirmation_metrics
from .fidelity import FULL, SCREEN


class SearchRecord:
    """The trials' runs under the parent run `engine.lifecycle.drive` opened (`tags`: provenance)."""

    def __init__(self, cl, exp: str, parent: str, name: str, tags: dict[str, str]):
        self.cl, self.exp, self.parent, self.name, self.tags = cl, exp, parent, name, tags

    def start_trial(self, number: int, cell, optuna_params: dict[str, Any], rung: str | None = None) -> str:
        """A trial's run and its pruned model: its only run, or (a screened search) its full-fidelity one
        (`rung` "full"). A screen (`rung` "screen") is a run of kind `screen` tagged `polyprune.screened=N`,
        not `polyprune.trial`, with no LoggedModel: its masks are a low-fidelity draft, so no reader of
        trials (report, register, status) takes it for a trial's result."""
        params = {f"optuna.{k}": v for k, v in optuna_params.items()}
        if rung:
            params.update({f"fidelity.{k}": v for k, v in (cell.key.get("fidelity") or {"statistics": "exact"}).items()})
        if rung == SCREEN:
            tags = {**self.tags, STUDY: self.name, SCREENED: str(number), RUN_KIND: SCREEN, RUNG: rung}
            return tracking.start_cell(self.cl, self.exp, self.parent, self.name, cell, tags, f"trial {number} (screen)", params)
        tags = {**self.tags, STUDY: self.name, TRIAL: str(number), RUN_KIND: "trial", **({RUNG: rung} if rung else {})}
        run_id = tracking.start_cell(self.cl, self.exp, self.parent, self.name, cell, tags, run_name=f"trial {number}", params=params)
        attach_model(self.cl, self.exp, run_id, cell, {tracking.CELL: cell.cell_id, tracking.SWEEP: self.name,
                                                       STUDY: self.name, TRIAL: str(number)}, trial=number)
        return run_id

    def end(self, study, summary: dict[str, Any], metrics: list[str]) -> None:
        """Best trials, baselines, the confirmation and figures on the parent (the lifecycle then ends it)."""
        shared = {**summary, "storage": shown(summary["storage"])} if summary.get("storage") else summary  # no password in the record
        files = {"best_trials.json": (json.dumps(shared, indent=2, default=str) + "\n").encode()}
        if study is not None:
            files.update(figures(study, metrics))
        m: dict[str, float] = {}
        if "n_complete" in summary:
            m.update({"trials.complete": summary["n_complete"], "trials.failed": summary["n_failed"],
                      "trials.pruned": summary.get("n_pruned", 0)})
        f = summary.get("fidelity")
        if f:  # a screened search's cost per rung (`report` shows it)
            m.update({f"rungs.{r}.{k}": f[r][k] for r in ("screen", "full") for k in ("runs", "cell_s")})
            m.update({"rungs.cache_bytes": f["cache"]["bytes"], "rungs.cache_build_s": f["cache"]["build_s"]})
        best = summary.get("best") or []
        if len(metrics) == 1 and best:  # best.<metric> is valid (chosen on it), best.test.* its test numbers
            m[f"best.{metrics[0]}"] = best[0]["values"][0]
            m["best.trial"] = best[0]["number"]
            m.update({f"best.{k}": v for k, v in best[0].get("test", {}).items()})
        for b in summary.get("baselines") or []:
            if b.get("values"):
                key = f"baseline.{metric_key(b['label'])}"
                m.update({f"{key}.{k}": v for k, v in zip(metrics, b["values"])})
                m.update({f"{key}.{k}": v for k, v in b.get("test", {}).items()})
        c = summary.get("confirmation")
        if c:
            files["confirmation.json"] = (json.dumps(c, indent=2, default=str) + "\n").encode()
            m.update(confirmation_metrics(c))
            if c.get("winner_number") is not None and c.get("vs"):  # a verdict was reached
                tracking.log_tags(self.cl, self.parent, {CONFIRMED: str(c["winner_number"])})
        tracking.log_artifacts(self.cl, self.parent, files)
        tracking.log_metrics(self.cl, self.parent, m)
        tracking.log_tags(self.cl, self.parent, {BEST_TRIALS: ",".join(str(b["number"]) for b in best)})

    def register(self, as_name: str, summary: dict[str, Any], objective) -> str:
        """The search's best trial's logged model as a version of `as_name` (alias `best`; as
        `polyprune register` does); the line that says what happened. Best = chosen on valid by
        the first objective (among the Pareto trials with several): choosing on test would tune
        on it. The description quotes the valid value and, beside it, the test value."""
        metric, sign = objective.metric, 1 if objective.direction == "minimize" else -1
        done = [t for t in summary["best"] if t.get("values") and t.get("mlflow_run_id")]
        confirmed = (summary.get("confirmation") or {}).get("winner_trial")
        done = [confirmed] if confirmed and confirmed.get("mlflow_run_id") else done  # the confirmed winner
        if not done:
            return f"register {as_name}: no complete trial in study {self.name!r}; nothing registered"
        t = min(done, key=lambda t: (sign * t["values"][0], t["number"]))
        model = self.cl.get_logged_model(self.cl.get_run(t["mlflow_run_id"]).data.tags[models.MODEL_ID])
        valid, test = t["values"][0], (t.get("test") or {}).get(f"test.{metric}")
        quoted = f"test {test:.6g}" if test is not None else "test not measured"
        text = (f"best of search {self.name!r} by {metric} on valid ({objective.direction}) = {valid:.6g} ({quoted}): "
                f"trial {t['number']}, {model.name} ({model.model_id}, run {t['mlflow_run_id']})")
        tags = {METRIC: metric, SPLIT: "valid", VALUE: f"{valid:.10g}", SWEEP: self.name, TRIAL: str(t["number"])}
        if test is not None:
            tags[TEST_VALUE] = f"{test:.10g}"
        return models.register_best(self.cl, as_name, model, text, tags)

    def rungs(self) -> dict[str, Any]:
        """A screened search's cost per rung, from its FINISHED runs (every driver's, so a resumed search
        counts all): runs and cell seconds of the screens and of the promoted full-fidelity trials, and the
        statistics cache (its size; the seconds spent building it, on every worker)."""
        out: dict[str, Any] = {}
        for rung, where in ((SCREEN, f"tags.`{RUN_KIND}` = '{SCREEN}'"), (FULL, f"tags.`{RUNG}` = '{FULL}'")):
            runs = [r for r in tracking.all_runs(self.cl, self.exp, f"{where} and tags.`{STUDY}` = '{self.name}'")
                    if r.info.status == "FINISHED"]
            out[rung] = {"runs": len(runs), "cell_s": sum(r.data.metrics.get("time.cell_s", 0.0) for r in runs)}
            if rung == SCREEN:
                m = [r.data.metrics for r in runs]
                out["cache"] = {"bytes": max((x.get("screen.cache_bytes", 0.0) for x in m), default=0.0),
                                "build_s": sum(x.get("screen.cache_build_s", 0.0) for x in m)}
        return out

    def held_out(self, run_id: str) -> dict[str, float]:
        """A trial's test.* metrics: in MLflow only, so the study (and its sampler) never holds them."""
        try:
            return {k: v for k, v in self.cl.get_run(run_id).data.metrics.items() if k.startswith("test.")}
        except Exception:  # a run deleted by hand: the summary says nothing rather than fail
            return {}


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
        tag = f"_{tracking.safe_name(m)}" if multi else ""
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


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def trial_dict(t) -> dict[str, Any]:
    u = t.user_attrs
    return {"number": t.number, "values": list(t.values) if t.values else None, "calib": u.get("calib"),
            "schedule": u.get("schedule"), "hp": u.get("hp"), "params": dict(t.params), "baseline": u.get(BASELINE),
            "mlflow_run_id": u.get("mlflow_run_id")}
