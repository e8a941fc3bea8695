"""`polyprune search FILE`: Optuna search of calibration mixes / M-Wanda coefficients /
layerwise schedules, trials on the sweep's Ray workers, recorded in MLflow (work in `orchestrator.search`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="search file (YAML; keys in docs/search.md)")
    p.add_argument("--n-trials", type=int, default=None, help="run N more trials (default: up to the file's n_trials in all)")
    p.add_argument("--storage", default=None, help="Optuna storage: sqlite:///F, journal:///F, postgresql://... (default: the file's)")
    p.add_argument("--ray-address", default=None, help="auto | HOST:PORT | ray://HOST:10001 (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the file's tracking_uri, else sqlite:///mlflow.db beside the file)")


def run(args) -> int:
    from ..engine.session import RaySession
    from ..search.driver import run_search
    from .sweep import start_ahead

    with RaySession(args.ray_address) as ray:
        start_ahead(args, ray)  # a local Ray starting while the file is validated, as for a sweep
        summary = run_search(args.file, args.n_trials, args.storage, ray, args.tracking_uri)
    print_summary(summary)
    return 0 if summary["status"] == "FINISHED" else (130 if summary["status"] == "KILLED" else 1)


def print_summary(s: dict[str, Any]) -> None:
    from ..stores import shown

    print(f"search {s['study']}: {s['status']}; {s.get('n_complete', 0)} trials complete, {s.get('n_failed', 0)} failed"
          f"{', %d pruned' % s['n_pruned'] if s.get('n_pruned') else ''} (storage {shown(s['storage'])})")
    f = s.get("fidelity")
    if f:  # a screened search's cost per rung (search.fidelity)
        c = f["cache"]
        print(f"  rungs: {f['screen']['runs']} trials screened on {f['windows']} valid windows per language "
              f"({f['screen']['cell_s']:.0f} s), {f['full']['runs']} promoted to the exact prune ({f['full']['cell_s']:.0f} s); "
              f"statistics cache {c['bytes'] / 2**20:.1f} MiB, built in {c['build_s']:.1f} s")
    objs = s["objectives"]
    print("  values on valid (what the search chose by), test in brackets (what it never saw)")

    def values(t):
        test = t.get("test") or {}
        return ", ".join(f"{k}={v:.4g} (test {test[f'test.{k}']:.4g})" if f"test.{k}" in test else f"{k}={v:.4g}"
                         for k, v in zip(objs, t["values"] or []))

    def setting(t):
        sched = t["schedule"] if isinstance(t["schedule"], str) else "per-block profile"
        return f"calib={t['calib']} schedule={sched} hp={t['hp']}"

    for b in s.get("baselines") or []:  # run as the literature ran them: the label names the method
        print(f"  baseline {b['label']:<22} {values(b) or 'not run'}  {setting(b)}")
    for t in s.get("best") or []:
        print(f"  best{' (Pareto)' if len(objs) > 1 else ''}{'':8} trial {t['number']:>3}: {values(t)}  {setting(t)}")
    if s.get("confirmation"):  # the winner chosen on selection seeds, the verdict on test seeds
        from ..search.confirm import lines

        print("\n".join(lines(s["confirmation"])))
    print(f"record: {s.get('tracking_uri')} (experiment {s['study']!r})")
