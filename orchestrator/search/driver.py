"""A search's run: THE list of its stages (`stage_list`), driven by the engine's lifecycle.

Order of work: validate the file, its space, one representative trial and every baseline (nothing is
created on a bad file) -> `engine.lifecycle.drive` (start-up, store, lease, parent run, interrupt,
final status) with `SearchJob` as its job: under the lease, the study opened and taken over and the
finished runs listed (`context.SearchContext`), then each stage in order, each one pass of the
scheduler:

    baselines.Baselines     the literature's baselines and the method alone, at the search's seed
    trials.Trials           the searched trials: Optuna's ask-and-tell, `parallel` in flight
    selection.Selection     (confirm:) the top trials on valid re-run on the selection seeds: the winner
    held_out.HeldOut        the test split of the best trials and of the winner (trials measure valid only)
    test_seeds.TestSeeds    (confirm:) the winner and every baseline on the test seeds: the verdict

-> each stage's part of the summary, recorded on the parent run -> the (confirmed) best trial
registered (`register:`). A stage is an object with the shared context, that says which cells it
still needs (planned once, when it is reached: a later stage reads what the earlier ones produced),
runs them, and adds its part to the summary; docs/extending.md says how to add one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.errors import UserError

from .. import models, tracking
from ..names import DRIVER, STUDY
from ..engine.lifecycle import Job, drive
from ..engine.record import log
from ..stores import shown
from .baselines import Baselines
from .context import SearchContext, quiet
from .held_out import HeldOut
from .record import SearchRecord
from .selection import Selection
from .study import check_storage
from .test_seeds import TestSeeds
from .trials import Trials


def stage_list(ctx, n_trials: int | None) -> list:
    """THE search, in order. A new stage is a module of its own and one line here (docs/extending.md)."""
    baselines = Baselines(ctx)
    selection = Selection(ctx) if ctx.cfg.confirm else None  # the confirmation (confirm:)
    out = [baselines, Trials(ctx, n_trials)]
    out += [selection] if selection else []
    out.append(HeldOut(ctx, selection))  # after the selection: its winner is reported too
    out += [TestSeeds(ctx, selection, baselines)] if selection else []
    return out


def run_search(config, n_trials: int | None = None, storage: str | None = None, ray_address: str | None = None,
               tracking_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) the search in `config` (a search-file path, or its contents as a dict
    whose relative paths are relative to the cwd). Returns
    {"study", "status", "n_complete", "n_failed", "best": [...], "baselines": [...]}, each trial
    as {"number", "values" (valid: what the sampler saw), "test" ({test.<metric>: value}: never told;
    from its held-out run unless `test_every_trial`),
    "calib", "schedule", "hp", "params"}, each baseline as {"label", "method", "calib", "values", "test", ...};
    with `confirm:`, "confirmation" (`confirm.verdict`'s fields). Best trials are chosen on valid."""
    from ..config import resolve_tracking_uri
    from .file import load_search, parse_search, resolve_storage

    if isinstance(config, dict):  # built in code (e.g. by `polyprune demo`): paths relative to the cwd
        import yaml

        cfg, space = parse_search(config, Path.cwd())
        source, file = yaml.safe_dump(config, sort_keys=False).encode(), ""
    else:
        cfg, space = load_search(config)
        source, file = Path(config).read_bytes(), str(Path(config).resolve())  # named in the experiment's description
    if cfg.register_as:
        models.check_registered_name(cfg.register_as, "register")
    if n_trials is not None and n_trials <= 0:
        raise UserError("n-trials", f"must be a positive integer, got {n_trials}")
    if storage:
        cfg.storage = resolve_storage(storage, Path.cwd())
    if tracking_uri:
        cfg.tracking_uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    tracking.check_uri(cfg.tracking_uri)  # the record's store first (as a sweep), then the study's
    check_storage(cfg.storage)
    job = SearchJob(cfg, space, source, file, n_trials)
    status = drive(job, ray_address).status
    summary = {**job.result, "tracking_uri": cfg.tracking_uri}
    if status == "FINISHED" and cfg.register_as:  # a normal end only: an interrupted study's best is not its best
        summary["registered"] = job.ctx.rec.register(cfg.register_as, summary, cfg.objectives[0])
        print(summary["registered"], flush=True)
    return summary


def trial_resources(cfg):
    """The file's resources; cpu_workers defaults to one CPU worker per trial in flight."""
    from ..config import ResourcesConfig

    res = cfg.resources
    if "cpu_workers" not in res.model_fields_set:
        res = ResourcesConfig(**{**res.model_dump(), "cpu_workers": cfg.parallel})
    return res


class SearchJob(Job):
    """A search for `lifecycle.drive`: its stages (`stage_list`) in order, each one pass of the scheduler,
    all under one lease and parent run, ended by one interrupt path."""

    kind = "search"

    def __init__(self, cfg, space, source: bytes, file: str, n_trials: int | None):
        self.cfg, self.space, self.source, self.file = cfg, space, source, file
        self.name, self.tracking_uri, self.resources = cfg.name, cfg.tracking_uri, trial_resources(cfg)
        self.ctx = SearchContext(cfg, space)
        self.all_stages = stage_list(self.ctx, n_trials)
        self.result: dict[str, Any] = {}

    def open(self, rec) -> bool:
        """Under the search's lease: the study and the record as they stand; True when a stage has cells
        to run. Stages are asked in order and only until one has: a later stage plans from what the
        earlier ones leave, so it plans when it is reached."""
        lost = self.ctx.open(rec)
        if lost:
            log(f"search {self.name}: {lost} trials left RUNNING by a stopped driver re-enqueued")
        return any(s.pending() for s in self.all_stages)

    def parent(self):
        cfg = self.cfg
        return {STUDY: cfg.name}, {
            "file": self.file, "model": cfg.model, "method": cfg.method, "sparsity": cfg.sparsity, "space": self.space.name,
            "calib_languages": ",".join(cfg.calibration.languages), "parallel": cfg.parallel, "storage": shown(cfg.storage),
            "objectives": ",".join(f"{o.metric}:{o.direction}" for o in cfg.objectives)}, {
            "search.yaml": self.source, "space.yaml": Path(self.space.path).read_bytes()}

    def stages(self, rec):
        self.ctx.rec = SearchRecord(rec.cl, rec.exp, rec.parent, self.name, rec.tags)
        for stage in self.all_stages:
            if stage.pending():
                yield stage.run()

    def stop(self, status: str, why: str) -> None:
        for stage in self.all_stages:
            quiet(lambda stage=stage: stage.stop(status, why))

    def has_failures(self) -> bool:
        return any(s.has_failures() for s in self.all_stages)

    def end(self, status: str) -> None:
        cfg = self.cfg
        self.result = {"study": cfg.name, "status": status, "storage": cfg.storage, "objectives": self.ctx.metrics}
        for stage in self.all_stages:
            quiet(lambda stage=stage: stage.finish(self.result))
        quiet(lambda: self.ctx.rec.end(self.ctx.study, self.result, self.ctx.metrics))

    def release(self) -> None:
        if self.ctx.study is not None:
            self.ctx.study.set_user_attr(DRIVER, "")
