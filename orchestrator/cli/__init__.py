"""`polyprune` command line. Each subcommand is one module of this package exposing
`add_arguments(parser)` and `run(args) -> int`, listed in COMMANDS; modules import
lazily so `polyprune prune` never pays for importing Ray or MLflow. A command
parses and checks its arguments and calls into `orchestrator.sweep`, `.search` or
`.report`, where the work is. A new command: a module here plus a COMMANDS line.

Global flags: `--version` (polyprune's and the key libraries' versions, `tasks.versions`, read from
the installed packages' metadata: nothing imported) and `--verbose` (every library's messages: `noise`), which a
command also takes after its name.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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


VERBOSE_HELP = "show every library's messages (Ray, MLflow, servers), not only polyprune's; = POLYPRUNE_LOG_LEVEL=INFO"


def versions() -> list[str]:
    """One `NAME VERSION` line per library that matters (tasks.versions.LIBRARIES: metadata only,
    nothing imported), polyprune's with the git commit of a checkout."""
    from tasks.versions import LIBRARIES, version_of

    return [f"{name} {version_of(name) or 'not installed'}{checkout() if name == 'polyprune' else ''}" for name in LIBRARIES]


def checkout() -> str:
    """" (git 1a2b3c4d, modified)" when polyprune runs from a git checkout, else ""."""
    from ..provenance import git_state  # no MLflow import: --version stays metadata only

    if not (Path(__file__).resolve().parents[2] / ".git").exists() or (state := git_state()) is None:
        return ""
    commit, dirty = state
    return f" (git {commit[:8]}{', modified' if dirty else ''})"


class _Versions(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("\n".join(versions()))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="polyprune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Versions, nargs=0, help="print polyprune's and the key libraries' versions")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # after the command's name too; SUPPRESS: absent there, it leaves the global flag's value alone
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
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
    from .noise import settled

    # Ray may be started ahead (`RaySession.ahead`) only where polyprune is the program: a caller
    # of main([...]) (tests, a notebook) manages its own Ray.
    args.own_process = argv is None
    try:
        with settled(args.verbose):
            return int(args._run(args) or 0)
    except UserError as e:
        sys.stderr.write(f"polyprune {args.command}: {e}\n")
        return 2
    finally:
        if args.own_process:
            # The interpreter's exit then skips collecting the millions of objects torch, transformers,
            # MLflow and Ray leave (~1 s on 2 cores, benchmarks/sweep_overhead.py); nothing of ours waits on it.
            import gc

            gc.freeze()

