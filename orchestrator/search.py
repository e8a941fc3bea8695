"""`polyprune search FILE`: Optuna search of calibration mixes / M-Wanda coefficients /
layerwise schedules, trials on the sweep's Ray worker actors, recorded in MLflow.

Order of work: validate the file, its space and one representative trial (nothing
is created on a bad file) -> open the study (named after `name`; created or
resumed) -> take the study over: trials a dead driver left RUNNING are failed,
marked lost and re-enqueued -> enqueue the baselines on a new study -> ask, run on
workers, tell, `parallel` in flight, until the budget is met -> best trials and
figures on the MLflow parent run.

Budget: the file's `n_trials` is the study's total; `--n-trials N` adds N to what
the study already has. Counted are COMPLETE and FAIL trials, except lost ones
(killed driver or worker), which are re-run from the same parameters up to
`resources.max_retries` times; a trial that fails by itself is not retried.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError

DEFAULTS = {
    "beat_s": 10.0,  # the driver's heartbeat on the study (user attr), so a resume can tell it is gone
    "stale_s": 120.0,  # a driver on another host whose beat is older than this is taken as dead
    "cell_delay_s": float(os.environ.get("POLYPRUNE_CELL_DELAY_S", 0)),  # test hook, as in sweeps
}
DRIVER, BEAT, BASELINES_DONE = "polyprune.driver", "polyprune.beat", "polyprune.baselines"
LOST, ATTEMPT, OVERRIDE, BASELINE = "polyprune.lost", "polyprune.attempt", "polyprune.override", "polyprune.baseline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="search file (YAML; SPEC 'Sweep and search files')")
    p.add_argument("--n-trials", type=int, default=None, help="run N more trials (default: up to the file's n_trials in all)")
    p.add_argument("--storage", default=None, help="Optuna storage: sqlite:///F, journal:///F, postgresql://... (default: the file's)")
    p.add_argument("--ray-address", default=None, help="auto | HOST:PORT | ray://HOST:10001 (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the file's tracking_uri, else sqlite:///mlflow.db beside the file)")


def run(args) -> int:
    summary = run_search(args.file, args.n_trials, args.storage, args.ray_address, args.tracking_uri)
    _print_summary(summary)
    return 0 if summary["status"] == "FINISHED" else (130 if summary["status"] == "KILLED" else 1)


def run_search(config, n_trials: int | None = None, storage: str | None = None, ray_address: str | None = None,
               tracking_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) the search in `config` (a search-file path, or its contents as a dict
    whose relative paths are relative to the cwd). Returns
    {"study", "status", "n_complete", "n_failed", "best": [...], "baselines": [...]}, each trial
    as {"number", "values", "calib", "schedule", "hp", "params", "baseline"}."""
    from .search_config import evaluation, load_search, parse_search, resolve_storage
    from .sweep_config import resolve_tracking_uri

    if isinstance(config, dict):  # built in code (e.g. by `polyprune demo`): paths relative to the cwd
        import yaml

        cfg, space = parse_search(config, Path.cwd())
        source = yaml.safe_dump(config, sort_keys=False).encode()
    else:
        cfg, space = load_search(config)
        source = Path(config).read_bytes()
    if n_trials is not None and n_trials <= 0:
        raise UserError("n-trials", f"must be a positive integer, got {n_trials}")
    if storage:
        cfg.storage = resolve_storage(storage, Path.cwd())
    if tracking_uri:
        cfg.tracking_uri = resolve_tracking_uri(tracking_uri, Path.cwd())
    from . import tracking

    tracking.client(cfg.tracking_uri, create=False)  # a missing sqlite folder is a UserError before anything exists
    study = open_study(cfg)
    return Search(cfg, space, evaluation(cfg), study, source).run(n_trials, ray_address)


# ---------------------------------------------------------------- the study


def open_study(cfg):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage: Any = cfg.storage
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).parent.is_dir():
        raise UserError("storage", f"folder of {storage!r} does not exist")
    if storage.startswith("journal:///"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage[len("journal:///") - 1:])
        if not path.parent.is_dir():
            raise UserError("storage", f"folder of {storage!r} does not exist")
        storage = JournalStorage(JournalFileBackend(str(path)))
    directions = [o.direction for o in cfg.objectives]
    try:
        if isinstance(storage, str):
            storage = optuna.storages.RDBStorage(storage)  # one engine for both opens below
        study = optuna.create_study(study_name=cfg.name, storage=storage, directions=directions,
                                    sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError("storage", f"cannot open {cfg.storage!r}: {e}") from None
    # The sampler's seed moves on with the study: a resumed study with a fixed seed would
    # otherwise replay the first run's start-up proposals. constant_liar: trials in flight
    # count as (pessimistic) results, so `parallel` proposals do not pile onto one point.
    seed = None if cfg.sampler_seed is None else cfg.sampler_seed + len(study.get_trials(deepcopy=False))
    study = optuna.load_study(study_name=cfg.name, storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError("objectives", f"study {cfg.name!r} in {cfg.storage} was created with directions "
                                      f"{[d.name.lower() for d in study.directions]}; a search's objectives cannot change (rename it)")
    return study


def take_over(study, max_retries: int) -> int:
    """Become the study's driver: refuse while another live driver holds it; fail the
    trials a dead driver left RUNNING (marked lost, re-enqueued). Returns how many."""
    attrs = study.user_attrs
    holder, beat = attrs.get(DRIVER) or "", attrs.get(BEAT) or 0
    host, _, pid = holder.rpartition(":")
    me = f"{socket.gethostname()}:{os.getpid()}"
    if holder and holder != me:
        if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
            raise UserError("FILE", f"study {study.study_name!r} is being run by process {holder}; wait for it or stop it")
        if host != socket.gethostname() and time.time() - float(beat) < DEFAULTS["stale_s"]:
            raise UserError("FILE", f"study {study.study_name!r} is being run by {holder} "
                                    f"(heartbeat {time.time() - float(beat):.0f}s ago); wait for it or stop it")
    study.set_user_attr(DRIVER, me)
    study.set_user_attr(BEAT, time.time())
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        lose(study, t, "the driver stopped while this trial ran (found RUNNING on resume)", max_retries)
    return len(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lose(study, frozen, reason: str, max_retries: int) -> None:
    """FAIL a trial whose process died (not its own fault) and re-enqueue its parameters,
    so no trial is lost, at most `max_retries` times."""
    from optuna.trial import Trial, TrialState

    Trial(study, frozen._trial_id).set_user_attr(LOST, reason)
    study.tell(frozen.number, state=TrialState.FAIL)
    attempt = int(frozen.user_attrs.get(ATTEMPT, 0)) + 1
    if attempt <= max_retries:
        carry = {k: v for k, v in frozen.user_attrs.items() if k in (OVERRIDE, BASELINE)}
        study.enqueue_trial(frozen.params, user_attrs={**carry, ATTEMPT: attempt, "polyprune.retry_of": frozen.number})


def counted(study) -> int:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    return sum(1 for t in done if LOST not in t.user_attrs)


def enqueue_baselines(study, cfg, space) -> None:
    """Enqueue, once per study: the uniform mix with Wanda-equivalent coefficients and the
    single target-language calibration (Wanda-equivalent too: one language, lambdas 0).
    What the space can express goes in as parameters; the rest as an override the
    driver applies (e.g. the target language when the space does not search the mix)."""
    from .search_config import target_language
    from .search_space import dirichlet_point

    if study.user_attrs.get(BASELINES_DONE) or not cfg.baselines:
        return
    langs = cfg.calibration.languages
    coef = {"lambda_var": 0.0, "lambda_prob": 0.0} if cfg.method == "mwanda" else {}

    def point(weights: dict[str, float] | None, calib: str | None):
        params, override = {}, {}
        if space.mix:
            params.update({f"mix.{l}": u for l, u in dirichlet_point(weights or {l: 1 / len(langs) for l in langs}).items()})
        if calib:
            override["calib"] = calib
        for k, v in coef.items():
            if space.searches(k):
                params[k] = v
            else:
                override.setdefault("hp", {})[k] = v
        if space.searches("schedule"):
            params["schedule"] = "uniform"
        elif space.profile_points and not space.profile_when:
            params.update({f"profile.{i}": 0.0 for i in range(space.profile_points)})
        return params, override

    items = [("uniform-wanda", *point(None, None))]
    target = target_language(cfg)
    if target:
        if space.mix and target in langs:
            items.append((f"{target}-only-wanda", *point({l: float(l == target) for l in langs}, None)))
        else:
            items.append((f"{target}-only-wanda", *point(None, target)))
    for label, params, override in items:
        study.enqueue_trial(params, user_attrs={BASELINE: label, **({OVERRIDE: override} if override else {})})
    study.set_user_attr(BASELINES_DONE, [label for label, _, _ in items])


# ---------------------------------------------------------------- trials


@dataclass
class Flight:
    trial: Any  # optuna Trial (asked)
    cell: Any  # sweep_config.Cell
    run_id: str
    worker: Any
    baseline: str | None


class Search:
    def __init__(self, cfg, space, ev: dict[str, Any], study, source: bytes):
        from tasks.pruning.sparsity import parse_sparsity

        self.cfg, self.space, self.ev, self.study, self.source = cfg, space, ev, study, source
        self.langs = list(cfg.calibration.languages)
        self.target = parse_sparsity(cfg.sparsity).fraction
        self.n_blocks = _n_blocks(cfg) if space.profile_points else None
        self.metrics = [o.metric for o in cfg.objectives]
        self.last_beat = 0.0

    def run(self, n_trials: int | None, ray_address: str | None) -> dict[str, Any]:
        from .search_record import SearchRecord
        from .sweep import _sigterm_as_interrupt, connect
        from . import tracking

        cfg = self.cfg
        lost = take_over(self.study, cfg.resources.max_retries)
        enqueue_baselines(self.study, cfg, self.space)
        before = counted(self.study)
        budget = cfg.n_trials if n_trials is None else before + n_trials
        _log(f"search {cfg.name}: study in {cfg.storage}: {before} trials counted"
             + (f", {lost} left RUNNING by a stopped driver re-enqueued" if lost else "")
             + f"; running until {budget} (space {self.space.name}, {cfg.parallel} in flight)")
        rec = SearchRecord(cfg.tracking_uri, cfg.name, tracking.provenance(),
                           {"model": cfg.model, "method": cfg.method, "sparsity": cfg.sparsity, "space": self.space.name,
                            "calib_languages": ",".join(self.langs), "objectives": ",".join(
                                f"{o.metric}:{o.direction}" for o in cfg.objectives), "parallel": cfg.parallel,
                            "storage": cfg.storage},
                           {"search.yaml": self.source, "space.yaml": Path(self.space.path).read_bytes()})
        status, owns_ray = "FINISHED", False
        previous = _sigterm_as_interrupt()
        try:
            if before < budget:
                owns_ray = connect(ray_address)
                self._loop(rec, budget - before)
        except KeyboardInterrupt:
            status = "KILLED"
        except BaseException:
            status = "FAILED"
            raise
        finally:
            for f in getattr(self, "inflight", {}).values():  # interrupted: nothing stays RUNNING
                _quiet(lambda f=f: rec.fail_trial(f.run_id, "the driver stopped", status="KILLED"))
                _quiet(lambda f=f: lose(self.study, self.study._storage.get_trial(f.trial._trial_id),
                                        "the driver stopped while this trial ran", cfg.resources.max_retries))
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)
            summary = self.summary(status)
            _quiet(lambda: rec.end(self.study, summary, self.metrics, status))
            self.study.set_user_attr(DRIVER, "")
            if owns_ray:
                import ray

                ray.shutdown()
        summary["tracking_uri"] = cfg.tracking_uri
        return summary

    # ------------------------------------------------------------ the loop

    def _loop(self, rec, todo: int) -> None:
        import ray

        from .scheduler import PER_WORKER, WORKER_WAIT_S, WorkerPool, _death_errors
        from .sweep_config import ResourcesConfig

        res = self.cfg.resources
        if "cpu_workers" not in res.model_fields_set:  # one CPU worker per trial in flight
            res = ResourcesConfig(**{**res.model_dump(), "cpu_workers": self.cfg.parallel})
        pool = WorkerPool(res, _log)
        death = _death_errors()
        self.inflight: dict[Any, Flight] = {}
        told, start_failures, since = 0, 0, time.monotonic()
        try:
            while told < todo or self.inflight:
                self._beat()
                while told + len(self.inflight) < todo and len(self.inflight) < self.cfg.parallel:
                    free = [w for w in pool.ready() if len(w.queue) < PER_WORKER]
                    if not free:
                        break
                    if not self._dispatch(min(free, key=lambda w: len(w.queue)), rec):
                        told += 1  # failed before it could run (invalid configuration): counted
                starting = pool.starting()
                refs = list(self.inflight) + list(starting)
                if not refs:
                    if told >= todo:
                        break
                    pool.spawn()
                    continue
                if self.inflight or pool.ready():
                    since = time.monotonic()
                elif time.monotonic() - since > WORKER_WAIT_S:
                    raise RuntimeError(f"no worker could be placed in {WORKER_WAIT_S:g}s (cluster: {ray.cluster_resources()})")
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                if not ready:
                    continue
                ref = ready[0]
                if ref in starting:
                    w = starting[ref]
                    try:
                        w.info = ray.get(ref)
                    except Exception as e:
                        start_failures += 1
                        pool.retire(w)
                        _log(f"worker failed to start: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                        if start_failures > 2 * pool.size and not pool.ready():
                            raise RuntimeError(f"workers cannot start: {e}") from None
                        pool.spawn()
                    continue
                f = self.inflight[ref]
                try:
                    out = ray.get(ref)
                except death as e:  # the worker died: every trial queued on it is lost, not failed
                    why = f"worker died: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    pool.retire(f.worker)
                    for r in list(f.worker.queue):
                        g = self.inflight.pop(r)
                        rec.fail_trial(g.run_id, why, status="KILLED")
                        lose(self.study, self.study._storage.get_trial(g.trial._trial_id), why, self.cfg.resources.max_retries)
                        todo += 1  # a lost trial does not use up the budget: its re-run does
                        told += 1
                        _log(f"LOST     trial {g.trial.number}: {why}; re-enqueued")
                    f.worker.queue.clear()
                    pool.spawn()
                    continue
                except Exception as e:  # run() itself broke (it catches trial errors)
                    out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}", "traceback": str(e)}
                del self.inflight[ref]
                f.worker.queue.remove(ref)
                self._tell(f, out, rec)
                told += 1
        finally:
            pool.shutdown()

    def _dispatch(self, worker, rec) -> bool:
        """Ask a trial, turn it into a cell and send it; False when it failed before running."""
        from .search_space import sample

        trial = self.study.ask(self.space.distributions(self.langs))
        baseline = trial.user_attrs.get(BASELINE)
        try:
            point = sample(trial, self.space, self.langs, self.target, self.n_blocks)
            cell = self._cell(point, trial.user_attrs.get(OVERRIDE) or {})
        except UserError as e:
            trial.set_user_attr("polyprune.error", f"{e}")
            self.study.tell(trial, state=_fail())
            _log(f"FAILED   trial {trial.number}: {e}")
            return False
        k = cell.key
        trial.set_user_attr("calib", k["calib"])  # the canonical mix: what ran, whatever the parametrisation
        trial.set_user_attr("schedule", k["schedule"] if isinstance(k["schedule"], str) else [round(x, 6) for x in k["schedule"]])
        trial.set_user_attr("hp", k["hp"])
        trial.set_user_attr("cell_id", cell.cell_id)
        run_id = rec.start_trial(trial.number, cell, trial.params, baseline)
        trial.set_user_attr("mlflow_run_id", run_id)
        task = {"cell_id": cell.cell_id, "kind": "prune", "key": cell.key, "run": cell.run, "delay_s": DEFAULTS["cell_delay_s"]}
        ref = worker.actor.run.remote(task)
        worker.queue.append(ref)
        worker.model = cell.model
        self.inflight[ref] = Flight(trial, cell, run_id, worker, baseline)
        return True

    def _cell(self, point, override: dict[str, Any]):
        """The trial's sweep cell (same key as a sweep's, so the worker runs it unchanged)."""
        from tasks.api import PruneSpec, check_spec
        from tasks.data.langs import canonical_mix

        from .search_config import fixed_hp
        from .search_space import PROFILE
        from .sweep_config import Cell

        cfg = self.cfg
        mix = point.mix or {l: 1 / len(self.langs) for l in self.langs}
        calib = override.get("calib") or canonical_mix(mix)
        kind = point.schedule or cfg.schedule
        schedule = point.profile if kind == PROFILE else kind
        hp = {**fixed_hp(cfg, self.space, kind), **point.hp, **override.get("hp", {})}
        spec = check_spec(PruneSpec(model=cfg.model, method=cfg.method, sparsity=cfg.sparsity, calib=calib,
                                    data=cfg.calibration.data, nsamples=cfg.calibration.nsamples,
                                    seqlen=cfg.calibration.seqlen, seed=cfg.seed, schedule=schedule, hp=hp))
        key = {"kind": "prune", "model": cfg.model, "method": spec.method, "sparsity": spec.sparsity, "calib": spec.calib,
               "data": spec.data, "nsamples": spec.nsamples, "seqlen": spec.seqlen, "seed": spec.seed,
               "schedule": spec.schedule, "hp": spec.hp, "dtype": cfg.dtype, "eval": self.ev}
        ev = cfg.evaluation
        run = {"batch_size": cfg.calibration.batch_size, "trust_remote_code": cfg.trust_remote_code,
               "save_model": cfg.save_model, "ppl_batch_size": ev.ppl.batch_size if ev and ev.ppl else 8,
               "lm_eval_batch_size": ev.lm_eval.batch_size if ev and ev.lm_eval else 8}
        return Cell("prune", key, run)

    def _tell(self, f: Flight, out: dict[str, Any], rec) -> None:
        from .search_record import finite

        trial, n = f.trial, f.trial.number
        if out.get("ok"):
            m = out["metrics"]
            bad = [k for k in self.metrics + [c.metric for c in self.cfg.constraints] if not finite(m.get(k))]
            if bad:  # NaN / inf perplexity of a broken model: FAIL with the reason, not a number
                out = {"ok": False, "error": f"objective {bad[0]} is {m.get(bad[0])!r} (missing or not finite)",
                       "tags": out.get("tags", {}), "metrics": m}
        if not out.get("ok"):
            if out.get("metrics"):
                from . import tracking

                tracking.log_metrics(rec.cl, f.run_id, out["metrics"])
            rec.fail_trial(f.run_id, out.get("error", "unknown error"), out.get("traceback", ""), "FAILED", out.get("tags"))
            trial.set_user_attr("polyprune.error", out.get("error", "unknown error")[:1000])
            self.study.tell(trial, state=_fail())
            _log(f"FAILED   trial {n}: {out.get('error')}")
            return
        m = out["metrics"]
        for c in self.cfg.constraints:  # Optuna: feasible when every constraint value <= 0
            v = max((m[c.metric] - c.max) if c.max is not None else -math.inf,
                    (c.min - m[c.metric]) if c.min is not None else -math.inf)
            trial.set_constraint(c.metric, v)
        rec.finish_trial(f.run_id, out)
        values = [float(m[k]) for k in self.metrics]
        self.study.tell(trial, values)
        shown = " ".join(f"{k}={v:.4g}" for k, v in zip(self.metrics, values))
        _log(f"COMPLETE trial {n}{f' ({f.baseline})' if f.baseline else ''}: {shown}  calib={f.cell.key['calib']} "
             f"{m.get('time.cell_s', 0):.1f}s")

    def _beat(self) -> None:
        if time.monotonic() - self.last_beat >= DEFAULTS["beat_s"]:
            self.study.set_user_attr(BEAT, time.time())
            self.last_beat = time.monotonic()

    # ------------------------------------------------------------ results

    def summary(self, status: str) -> dict[str, Any]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        try:
            best = list(self.study.best_trials) if len(self.metrics) > 1 else ([self.study.best_trial] if complete else [])
        except ValueError:
            best = []
        baselines = [t for t in complete if BASELINE in t.user_attrs]
        return {"study": self.cfg.name, "status": status, "storage": self.cfg.storage, "objectives": self.metrics,
                "n_complete": len(complete), "n_failed": sum(t.state == TrialState.FAIL for t in trials),
                "best": [_trial_dict(t) for t in sorted(best, key=lambda t: t.number)],
                "baselines": [_trial_dict(t) for t in baselines]}


def _trial_dict(t) -> dict[str, Any]:
    u = t.user_attrs
    return {"number": t.number, "values": list(t.values) if t.values else None, "calib": u.get("calib"),
            "schedule": u.get("schedule"), "hp": u.get("hp"), "params": dict(t.params), "baseline": u.get(BASELINE),
            "mlflow_run_id": u.get("mlflow_run_id")}


def _n_blocks(cfg) -> int:
    """Decoder blocks of the model, from its config alone (the driver never loads weights)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise UserError("model", f"cannot read the config of {cfg.model!r}: {str(e).splitlines()[0]}") from None
    conf = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(conf, name, None), int):
            return getattr(conf, name)
    raise UserError("model", f"cannot tell the number of blocks of {cfg.model!r} from its config (needed for a per-block profile)")


def _fail():
    from optuna.trial import TrialState

    return TrialState.FAIL


def _quiet(fn) -> None:
    try:
        fn()
    except Exception as e:  # cleanup must go on
        _log(f"cleanup: {type(e).__name__}: {e}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _print_summary(s: dict[str, Any]) -> None:
    print(f"search {s['study']}: {s['status']}; {s['n_complete']} trials complete, {s['n_failed']} failed "
          f"(storage {s['storage']})")
    objs = s["objectives"]

    def line(t):
        vals = ", ".join(f"{k}={v:.4g}" for k, v in zip(objs, t["values"] or []))
        sched = t["schedule"] if isinstance(t["schedule"], str) else "per-block profile"
        return f"trial {t['number']:>3}: {vals}  calib={t['calib']} schedule={sched} hp={t['hp']}"

    for t in s["baselines"]:
        print(f"  baseline {t['baseline']:<16} {line(t)}")
    for t in s["best"]:
        print(f"  best{' (Pareto)' if len(objs) > 1 else ''}{'':12} {line(t)}")
    print(f"record: {s.get('tracking_uri')} (experiment {s['study']!r})")
