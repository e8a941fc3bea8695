"""`polyprune ui`: the MLflow UI on a sweep's store, bound to 127.0.0.1 unless told otherwise.

The store is --tracking-uri, else the sweep file's (when FILE is given), else
MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder. Artifacts of a
sqlite store live where the sweep put them (file:// paths beside the database),
so the UI reads them straight from disk.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", nargs="?", default=None, help="a sweep file: use its tracking_uri")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (sqlite:///..., postgresql://..., http://...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the UI to the network)")
    p.add_argument("--port", type=int, default=5000)


def command(uri: str, host: str, port: int) -> list[str]:
    if uri.startswith(("http://", "https://")):
        raise UserError("tracking-uri", f"{uri} is already a tracking server: open it in a browser")
    # One worker: a browsing UI for one person; the default 4 take long to start on a small machine.
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]


def run(args) -> int:
    from .. import tracking
    from ..config import default_tracking_uri

    if not 0 < args.port < 65536:
        raise UserError("port", f"must be in 1..65535, got {args.port}")
    if args.tracking_uri or not args.file:
        uri = default_tracking_uri(args.tracking_uri)
    else:
        from ..sweep.file import load_sweep

        uri = load_sweep(args.file).tracking_uri
    path = tracking.sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserError("tracking-uri", f"no MLflow store at {uri} (run a sweep first, or give --tracking-uri)")
    cmd = command(uri, args.host, args.port)
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
