"""`polyprune dashboard SEARCH.yaml|NAME`: optuna-dashboard on a search's study, bound to 127.0.0.1
unless --host says otherwise.

The storage is --storage, else the search file's (`storage:`, default optuna.db beside
the file), else sqlite:///optuna.db here. Once the dashboard answers, the URL of the
study's page is printed on stdout. Stopping it (Ctrl-C, SIGTERM) stops the server
and its workers, as `polyprune ui` does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from tasks.errors import UserError

from .ui import browse_host, check_port, file_target, serve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="SEARCH.yaml|NAME", help="a search file, or a study name (with --storage)")
    p.add_argument("--storage", default=None, help="Optuna storage (default: the file's, else sqlite:///optuna.db here)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the dashboard to the network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--open", action="store_true", help="open the study's page in a browser once the server answers")


def storage_arg(storage: str) -> str:
    """What optuna-dashboard takes: a database URL, or the path of a journal file."""
    if storage.startswith("journal:///"):
        return storage[len("journal://"):]
    return storage


def study_id(base: str, name: str) -> int:
    """The dashboard's id of study `name` (its /api/studies lists them)."""
    with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as r:
        studies = json.load(r)["study_summaries"]
    for s in studies:
        if s["study_name"] == name:
            return s["study_id"]
    raise UserError("NAME", f"no study {name!r} in the storage; studies: {', '.join(s['study_name'] for s in studies) or 'none'}")


def run(args) -> int:
    from ..search.file import resolve_storage

    found = file_target(args.target)
    if found is not None and found["storage"] is None:
        raise UserError("SEARCH.yaml", f"{args.target!r} is a sweep file; a dashboard shows a search's study")
    name = found["name"] if found else args.target
    storage = resolve_storage(args.storage, Path.cwd()) if args.storage or not found else found["storage"]
    if storage.startswith(("sqlite:///", "journal:///")):
        path = Path(storage.split(":///", 1)[1])
        if not path.is_file():
            raise UserError("storage", f"no Optuna storage at {storage} (run the search first, or give --storage)")
    exe = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)) or shutil.which("optuna-dashboard")
    if exe is None:
        raise UserError("dashboard", "optuna-dashboard is not installed (pip install optuna-dashboard)")
    check_port(args.host, args.port)
    base = f"http://{browse_host(args.host)}:{args.port}"
    cmd = [exe, storage_arg(storage), "--host", args.host, "--port", str(args.port), "--quiet"]
    sys.stderr.write(f"starting optuna-dashboard for study {name!r} in {storage} on {args.host}:{args.port} ...\n")
    return serve(cmd, f"{base}/api/meta", "optuna-dashboard", lambda: f"{base}/dashboard/studies/{study_id(base, name)}", args.open)
