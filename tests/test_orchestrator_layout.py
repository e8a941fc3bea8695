"""The driver side's house rules (issue 12), read from the source: imports point one way
(cli -> sweep / search / report -> engine -> tracking / config -> tasks), no private name is
imported from another module, no Optuna private attribute is touched, modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "orchestrator"
# What each part of orchestrator/ may import from orchestrator/ (itself always).
ALLOWED = {
    "names": set(),
    "config": {"names"},
    "stores": set(),
    "lease": {"names", "stores"},
    "models": {"names"},
    "schema": set(),
    "provenance": {"names"},
    "tracking": {"names", "stores", "lease", "models", "schema"},
    "engine": {"names", "stores", "config", "tracking", "lease", "models", "provenance"},
    "sweep": {"names", "stores", "config", "tracking", "lease", "models", "engine"},
    "search": {"names", "stores", "config", "tracking", "lease", "models", "engine"},  # never sweep: both sit on engine
    "report": {"names", "config", "tracking", "models"},
    "cli": {"names", "stores", "config", "tracking", "models", "engine", "sweep", "search", "report", "lease", "provenance"},
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


def test_sweep_and_search_never_import_each_other():
    """Both are kinds of run on the engine (orchestrator/engine/): what one needs of the other belongs there."""
    bad = [f"{path.relative_to(PKG.parent)} imports orchestrator.{dep}" for path, part, tree in modules()
           for dep, _ in imported(path, tree) if {part, dep} == {"sweep", "search"}]
    assert not bad, bad


def module_of(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: dict[str, tuple[bool, str]]) -> dict[str, set[str]]:
    """{module: orchestrator modules it imports}, from `sources` ({module: (is_package, code)}),
    function-level imports included (a circle hidden inside a function is still a circle)."""
    graph: dict[str, set[str]] = {}
    for mod, (is_package, code) in sources.items():
        package = mod.split(".") if is_package else mod.split(".")[:-1]
        out = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                base = ".".join(base + (node.module.split(".") if node.module else []))
                # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        out &= set(sources) - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def orchestrator_sources() -> dict[str, tuple[bool, str]]:
    return {module_of(p): (p.name == "__init__.py", p.read_text(encoding="utf-8")) for p in sorted(PKG.rglob("*.py"))}


def test_no_import_circle_in_the_orchestrator():
    assert cycles(import_graph(orchestrator_sources())) == []


def test_the_circle_check_catches_a_circle_hidden_in_a_function():
    sources = orchestrator_sources()
    code = sources["orchestrator.engine.cells"][1] + "\n\ndef f():\n    from .lifecycle import drive\n"
    graph = import_graph({**sources, "orchestrator.engine.cells": (False, code)})
    # cells -> lifecycle -> scheduler -> worker -> cells
    assert any({"orchestrator.engine.cells", "orchestrator.engine.lifecycle"} <= set(c) for c in cycles(graph))


MAX_LINES = 300
# Modules still over MAX_LINES, each held at its size until it is split (a ratchet: shrink, never grow).
OVER = {"orchestrator/config.py": 307, "tasks/demo_model.py": 319}


def test_modules_stay_small():
    files = [*PKG.rglob("*.py"), *(PKG.parent / "tasks").rglob("*.py")]
    sizes = {str(p.relative_to(PKG.parent)): len(p.read_text().splitlines()) for p in files}
    assert not {p: n for p, n in sizes.items() if n > OVER.get(p, MAX_LINES)}, sizes


# What only `engine.lifecycle.drive` does: start Ray (session), open or create the MLflow store and experiment,
# take the lease, begin the parent run, run the loop. A kind's driver is a source of cells and a sink of events.
LIFECYCLE = {"hold", "claim_ray", "RaySession", "starting", "driving", "connect", "client", "experiment_id", "begin_parent",
             "run_cells", "init", "MlflowClient", "create_run", "set_terminated"}


def lifecycle_uses(tree) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            out += [f"from {module} import {a.name}" for a in node.names
                    if a.name in LIFECYCLE | {"lease", "session", "scheduler"} or module.split(".")[-1] in ("lease", "session")]
            out += [f"from {module}" for _ in range(module.split(".")[0] in ("ray", "mlflow"))]
        elif isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in ("ray", "mlflow")]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            out += [f"calls {name}"] if name in LIFECYCLE else []
    return out


def test_drivers_leave_start_up_store_lease_and_parent_run_to_the_lifecycle():
    for rel in ("sweep/driver.py", "search/driver.py"):
        tree = ast.parse((PKG / rel).read_text(encoding="utf-8"))
        assert not lifecycle_uses(tree), (rel, lifecycle_uses(tree))
        assert ("lifecycle", ["Job", "drive"]) in [(part.split(".")[-1], sorted(names)) for part, names in lifecycle_imports(tree)], rel


def lifecycle_imports(tree):
    return [(node.module or "", [a.name for a in node.names]) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("lifecycle")]


def test_the_driver_check_catches_a_driver_that_starts_things_itself():
    code = ("from ..lease import hold\nfrom .session import driving\nimport mlflow\n"
            "def f(cfg):\n    cl = tracking.client(cfg.tracking_uri, create=True)\n    tracking.begin_parent(cl)\n")
    assert len(lifecycle_uses(ast.parse(code))) == 5


ROOT = PKG.parent


def record_names_outside_names_py(paths) -> list[str]:
    """String constants spelling a polyprune record name anywhere but orchestrator/names.py."""
    found = []
    for path in paths:
        if path.name == "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("polyprune.") and " " not in node.value:
                found.append(f"{path.name}:{node.lineno}: {node.value}")
    return found


def test_record_names_live_in_one_module():
    assert record_names_outside_names_py(sorted(PKG.rglob("*.py"))) == []


def test_the_names_check_catches_a_literal(tmp_path):
    copy = tmp_path / "status.py"
    copy.write_text((PKG / "cli" / "status.py").read_text() + '\nSTRAY = "polyprune.trial"\n')
    assert record_names_outside_names_py([copy]) == [f"status.py:{len(copy.read_text().splitlines())}: polyprune.trial"]


def test_the_repo_sends_no_reader_to_a_document_it_lacks():
    """The design notes are docs/design.md; no file points at a design brief the repo does not ship."""
    word = re.compile(r"\b" + "SP" + "EC" + r"\b")
    texts = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".toml", ".txt", ".cfg"}
             and not any(part.startswith(".") or part in {"build", "dist"} for part in p.relative_to(ROOT).parts)]
    assert [str(p.relative_to(ROOT)) for p in texts if word.search(p.read_text(errors="ignore"))] == []
