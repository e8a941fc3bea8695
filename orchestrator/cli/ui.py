"""`polyprune ui`: the MLflow UI on a sweep's or search's store, bound to 127.0.0.1 unless told otherwise.

The store is --tracking-uri, else the file's (when FILE is a sweep or search file),
else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder. Artifacts of a
sqlite store live where the sweep put them (file:// paths beside the database), so
the UI reads them straight from disk. Once the server answers, the URL of the
experiment's runs table (model-training view), or with `--view models` of its Models
tab (one row per pruned model), is printed on stdout; `--open` opens it in a browser.

The server is this command's child: SIGINT / SIGTERM stop it and everything it
started (`serve`), so nothing outlives the command. Its output goes to stderr, less the
start-up notices a user has nothing to do about unless `--verbose` (`noise`): stdout is
the URL only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.errors import UserError

from . import noise

READY_TIMEOUT_S = 300  # mlflow server imports a lot: ~20 s on an idle 2-core machine, minutes on a loaded one


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|NAME", nargs="?", default=None,
                   help="a sweep or search file (its store and experiment), or an experiment name")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (sqlite:///..., postgresql://...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the UI to the network)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--view", default="runs", help="which page of the experiment: runs (the runs table, default) or "
                   "models (its Models tab: one row per pruned model, its metrics as columns)")
    p.add_argument("--open", action="store_true", help="open that page in a browser once the server answers")


def command(uri: str, host: str, port: int) -> list[str]:
    if uri.startswith(("http://", "https://")):
        raise UserError("tracking-uri", f"{uri} is already a tracking server: open it in a browser")
    # One worker: a browsing UI for one person; the default 4 take long to start on a small machine.
    # The registry store named (it is the same): else the server says on stdout that it assumed so.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if noise.quiet():  # uvicorn's start-up lines and one access-log line per request; its errors still show
        cmd += ["--uvicorn-opts", "--log-level warning --no-access-log"]
    return cmd


def check_port(host: str, port: int) -> None:
    """A taken port is one line now, not a server that dies after this command reported success."""
    if not 0 < port < 65536:
        raise UserError("port", f"must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError("port", f"cannot listen on {host}:{port} ({e.strerror}); give a free --port") from None


def browse_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)


def serve(cmd: list[str], ready: str, what: str, url_of=None, open_browser: bool = False) -> int:
    """Run a server child until it exits or this process gets SIGINT / SIGTERM, then stop the child's
    whole process group (uvicorn / gunicorn workers included) and wait for it. Once `ready` answers
    HTTP 200, print the URL (`url_of()`, or `ready`) on stdout. Exit: the server's code; 1 when it
    dies before answering; 130 / 143 when stopped by a signal."""
    import psutil

    # its own group: one signal reaches every worker
    proc = subprocess.Popen(cmd, start_new_session=True, env=noise.server_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    output = noise.server_lines(proc.stdout, sys.stderr)
    got: list[int] = []

    def stop(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline, url = time.monotonic() + READY_TIMEOUT_S, None
        while url is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        url = url_of() if url_of else ready
            except OSError:
                time.sleep(0.3)
        if url is None:
            if proc.poll() is None:
                sys.stderr.write(f"polyprune: {what} did not answer at {ready} within {READY_TIMEOUT_S} s; stopped it\n")
                return 1
            output.join(timeout=5)  # its own last lines (why) first
            sys.stderr.write(f"polyprune: {what} exited ({proc.returncode}) before answering at {ready}\n")
            return 1
        print(url, flush=True)
        sys.stderr.write(f"{what}: {url}  (Ctrl-C stops it)\n")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 128 + (got[0] if got else signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        _signal_all(proc.pid, family, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(_procs(family), timeout=5)
        if alive:
            _signal_all(proc.pid, [p.pid for p in alive], signal.SIGKILL)
        proc.wait()
        output.join(timeout=5)  # its last lines (why it failed) before this command's own
        for s, h in old.items():
            signal.signal(s, h)


def _procs(pids: list[int]) -> list:
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _signal_all(group: int, pids: list[int], sig: int) -> None:
    # the group first; then each pid in case one moved to a session of its own
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def file_target(target: str) -> dict | None:
    """{name, tracking_uri, storage} of a sweep or search file, read without loading its model (a
    browsing command must not train the `demo` alias); None when `target` is not a YAML file."""
    if not (target.endswith((".yaml", ".yml")) and Path(target).is_file()):
        return None
    from ..config import read_mapping, resolve_tracking_uri
    from ..search.file import resolve_storage

    raw = read_mapping(Path(target), "name")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise UserError("name", f"{target!r} has no name (a sweep or search file names its experiment)")
    base = Path(os.path.abspath(target)).parent
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = resolve_tracking_uri(raw.get("tracking_uri"), base) if raw.get("tracking_uri") or not env else resolve_tracking_uri(env, Path.cwd())
    storage = resolve_storage(raw.get("storage"), base) if "space" in raw else None
    return {"name": raw["name"], "tracking_uri": uri, "storage": storage}


def run(args) -> int:
    from .. import tracking
    from ..config import default_tracking_uri
    from ..stores import shown

    if args.view not in VIEWS:
        raise UserError("view", f"allowed: {', '.join(VIEWS)}; got {args.view!r}")
    found = file_target(args.target) if args.target else None
    name = found["name"] if found else args.target
    uri = default_tracking_uri(args.tracking_uri) if args.tracking_uri or not found else found["tracking_uri"]
    path = tracking.sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserError("tracking-uri", f"no MLflow store at {uri} (run a sweep first, or give --tracking-uri)")
    cmd = command(uri, args.host, args.port)
    check_port(args.host, args.port)
    if name is not None:
        cl, exp = tracking.open_experiment(name, uri)
    else:  # the newest experiment polyprune made, else the server's front page
        cl = tracking.client(uri, create=False)
        exp = newest_experiment(cl)
        if exp is None:
            sys.stderr.write(f"polyprune ui: {shown(uri)} holds no polyprune sweep or search: opening MLflow's front page\n")
    base = f"http://{browse_host(args.host)}:{args.port}"
    if exp is None:
        url = base + "/"
    else:
        url = models_url(base, exp) if args.view == "models" else runs_url(base, exp, runs_view(cl, exp))
    sys.stderr.write(f"starting the MLflow UI for {shown(uri)} on {args.host}:{args.port} ...\n")
    return serve(cmd, f"{base}/health", "MLflow UI", lambda: url, args.open)


def newest_experiment(cl) -> str | None:
    """The id of the newest experiment a polyprune sweep or search made (experiment tags, not run
    tags: marked model development and described by polyprune), None when there is none."""
    from ..names import EXPERIMENT_KIND, EXPERIMENT_NOTE, MODEL_DEVELOPMENT

    made = cl.search_experiments(filter_string=f"tags.`{EXPERIMENT_KIND}` = '{MODEL_DEVELOPMENT}' AND "
                                               f"tags.`{EXPERIMENT_NOTE}` LIKE 'polyprune %'",
                                 order_by=["creation_time DESC"], max_results=1)
    return made[0].experiment_id if made else None


VIEWS = ("runs", "models")
VIEW = "polyprune"  # the share key of the runs view `runs_view` stores in the experiment
VIEW_PARAMS = ("model_name", "method", "sparsity", "calib", "seed")


def runs_view(cl, exp_id: str) -> str:
    """Store a runs-table view in the experiment (MLflow's shared view state, tag
    `mlflow.sharedViewState.<key>`): runs sorted by ppl.mean, best first, with the cell's
    params and its perplexity metrics as columns. Any order but by date lists child runs
    flat, so no cell hides under a collapsed parent. Returns the share key."""
    from .. import tracking

    keys: set[str] = set()
    for r in tracking.all_runs(cl, exp_id):
        keys.update(k for k in r.data.metrics if k.startswith(("ppl.", "lmeval.")))
    metrics = sorted(keys, key=lambda k: (k != "ppl.mean", not k.startswith("ppl."), k))
    state = {"orderByKey": "metrics.`ppl.mean`" if "ppl.mean" in keys else "attributes.start_time",
             "orderByAsc": "ppl.mean" in keys,
             "selectedColumns": ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in metrics),
                                 *(f"params.`{p}`" for p in VIEW_PARAMS)]}
    cl.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW}", json.dumps(state))
    return VIEW


def runs_url(base: str, exp_id: str, view: str | None = None) -> str:
    """The MLflow UI's runs table of an experiment in model-training mode (MLflow 3.17 routes)."""
    shared = f"viewStateShareKey={view}&" if view else ""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?{shared}workflowType=machine_learning"


def models_url(base: str, exp_id: str) -> str:
    """The experiment's Models tab in model-training mode: its logged models, one row each, the
    metrics measured on the evaluation data first (MLflow 3.17 route)."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/models?workflowType=machine_learning"
