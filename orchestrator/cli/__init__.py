"""`polyprune` command line. Each subcommand is one module of this package exposing
`add_arguments(parser)` and `run(args) -> int`, listed in COMMANDS; modules import
lazily so `polyprune prune` never pays for importing Ray or MLflow. A command
parses and checks its arguments and calls into `orchestrator.sweep`, `.search` or
`.report`, where the work is. A new command: a module here plus a COMMANDS line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tasks.errors import UserError

COMMANDS = {
    "demo": ("orchestrator.cli.demo", "prune, evaluate and compare the offline demo model"),
    "prune": ("orchestrator.cli.prune", "prune one model and write it with masks, calibration ids and result.json"),
    "eval": ("orchestrator.cli.eval", "per-language perplexity and lm-eval tasks of a (pruned) model"),
    "sweep": ("orchestrator.cli.sweep", "run a sweep file's grid on Ray, recorded in MLflow"),
    "search": ("orchestrator.cli.search", "Optuna search of calibration mixes / schedules on Ray"),
    "status": ("orchestrator.cli.status", "progress of a sweep or search from MLflow"),
    "report": ("orchestrator.cli.report", "tables and figures of a sweep or search"),
    "analyze": ("orchestrator.cli.analyze", "what pruning kept per language inside the model: neurons, drift, subspaces"),
    "compare": ("orchestrator.cli.compare", "two runs side by side: params, metrics, mask overlap per block"),
    "register": ("orchestrator.cli.register", "register the best model of a sweep or search (alias best)"),
    "ui": ("orchestrator.cli.ui", "MLflow UI on the runs of a sweep or search (its store, bound to 127.0.0.1)"),
    "dashboard": ("orchestrator.cli.dashboard", "optuna-dashboard on a search's study (bound to 127.0.0.1)"),
}


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 already; keep its message to one line.
    def error(self, message: str):
        sys.stderr.write(f"polyprune: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="polyprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # command not built yet
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "_run"):
        sys.stderr.write(f"polyprune: command {args.command!r} is not available in this version\n")
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        sys.stderr.write(f"polyprune {args.command}: {e}\n")
        return 2


