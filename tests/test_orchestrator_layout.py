"""The driver side's house rules (issue 12), read from the source: imports point one way
(cli -> sweep / search / report -> tracking / config -> tasks), no private name is
imported from another module, no Optuna private attribute is touched, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "orchestrator"
# What each part of orchestrator/ may import from orchestrator/ (itself always).
ALLOWED = {
    "config": set(),
    "lease": set(),
    "models": set(),
    "tracking": {"lease", "models"},
    "sweep": {"config", "tracking", "lease", "models"},
    "search": {"config", "tracking", "sweep", "lease", "models"},
    "report": {"config", "tracking", "models"},
    "cli": {"config", "tracking", "models", "sweep", "search", "report", "lease"},
}


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts == ("__init__.py",):
            continue
        yield path, rel.parts[0].removesuffix(".py"), ast.parse(path.read_text(encoding="utf-8"))


def imported(path: Path, tree) -> list[tuple[str, list[str]]]:
    """(orchestrator part, names) for every import of orchestrator code in `tree`."""
    here = path.relative_to(PKG.parent).with_suffix("").parts[:-1]  # the module's package
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1] + tuple((node.module or "").split(".") if node.module else ())
            else:
                base = tuple(node.module.split("."))
            if base[0] != "orchestrator":
                continue
            names = [a.name for a in node.names]
            part = base[1] if len(base) > 1 else None
            if part is None:  # from orchestrator import tracking / from .. import tracking
                out += [(n, []) for n in names]
            else:
                out.append((part, names))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("orchestrator.")]
    return out


def test_dependencies_point_one_way():
    bad = [f"{path.relative_to(PKG.parent)} imports orchestrator.{dep}"
           for path, part, tree in modules() for dep, _ in imported(path, tree)
           if dep != part and dep not in ALLOWED[part]]
    assert not bad, bad


def test_no_private_names_across_modules_and_no_optuna_privates():
    bad = [f"{path.relative_to(PKG.parent)}: {n}" for path, _, tree in modules()
           for _, names in imported(path, tree) for n in names if n.startswith("_")]
    for path, _, tree in modules():
        bad += [f"{path.relative_to(PKG.parent)}: .{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_study_id")]
    assert not bad, bad


def test_modules_stay_small():
    sizes = {str(p.relative_to(PKG.parent)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 320}, sizes
