"""Run tags and experiment tags are two levels of MLflow's record; a reader that asks one level for
the other's name finds nothing and says nothing (issue 31: `polyprune ui` filtered experiments by the
run tag `polyprune.kind` and opened MLflow's front page). Read from the source: every call that
reads or writes an experiment's tags names only experiment-level constants of orchestrator/names.py
(`EXPERIMENT_*`, and the value `MODEL_DEVELOPMENT`), and no run-tag reader names one of those."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from orchestrator import names

PKG = Path(__file__).resolve().parent.parent / "orchestrator"
EXPERIMENT_CALLS = {"search_experiments", "set_experiment_tag", "delete_experiment_tag", "create_experiment"}
RUN_CALLS = {"search_runs", "all_runs", "child_runs", "set_tag", "log_tags", "create_run", "start_cell", "delete_tag"}
CONSTANTS = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
EXPERIMENT_LEVEL = {k for k, v in CONSTANTS.items() if v in names.EXPERIMENT_TAGS} | {"MODEL_DEVELOPMENT"}


def constants_in(node) -> set[str]:
    """names.py constants an expression mentions (KIND, names.KIND, tracking.KIND, inside f-strings too)."""
    found = set()
    for n in ast.walk(node):
        ident = n.id if isinstance(n, ast.Name) else (n.attr if isinstance(n, ast.Attribute) else None)
        if ident in CONSTANTS:
            found.add(ident)
    return found


def experiment_ish(node) -> bool:
    """`exp.tags`, `experiment.tags`, `cl.get_experiment_by_name(n).tags`: an experiment's tags."""
    return bool(re.search(r"exp", ast.unparse(node), re.I)) and not ast.unparse(node).endswith(".data")


def tag_uses(tree) -> list[tuple[str, int, set[str]]]:
    """(level, line, constants) of every tag read or write in `tree`: level "experiment" or "run"."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in EXPERIMENT_CALLS | RUN_CALLS:
            level = "experiment" if n.func.attr in EXPERIMENT_CALLS else "run"
            used = set().union(*(constants_in(a) for a in [*n.args, *(k.value for k in n.keywords)]), set())
            out.append((level, n.lineno, used))
        key = tags = None
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Attribute) and n.value.attr == "tags":
            key, tags = n.slice, n.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and \
                isinstance(n.func.value, ast.Attribute) and n.func.value.attr == "tags" and n.args:
            key, tags = n.args[0], n.func.value
        elif isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.In, ast.NotIn)) and \
                isinstance(n.comparators[0], ast.Attribute) and n.comparators[0].attr == "tags":
            key, tags = n.left, n.comparators[0]
        if key is not None:
            out.append(("experiment" if experiment_ish(tags.value) else "run", n.lineno, constants_in(key)))
    return out


def mixed_levels(paths) -> list[str]:
    bad = []
    for path in paths:
        for level, line, used in tag_uses(ast.parse(path.read_text(encoding="utf-8"))):
            wrong = used - EXPERIMENT_LEVEL if level == "experiment" else used & (EXPERIMENT_LEVEL - {"MODEL_DEVELOPMENT"})
            bad += [f"{path.name}:{line}: {level} tags read with {sorted(wrong)}"] if wrong else []
    return bad


def test_experiment_and_run_tags_are_read_with_constants_of_their_level():
    assert mixed_levels(sorted(PKG.rglob("*.py"))) == []


def test_there_are_experiment_tag_readers_to_check():
    uses = [u for p in sorted(PKG.rglob("*.py")) for u in tag_uses(ast.parse(p.read_text())) if u[0] == "experiment"]
    assert any("EXPERIMENT_KIND" in used for _, _, used in uses), uses  # ui.py's filter and tracking.py's marks


def test_the_check_catches_issue_31s_filter_and_its_mirror(tmp_path):
    ui = tmp_path / "ui.py"
    ui.write_text('made = cl.search_experiments(filter_string=f"tags.`{names.RUN_KIND}` = \'{names.MODEL_DEVELOPMENT}\'")\n'
                  'kind = experiment.tags.get(names.RUN_KIND)\n'
                  'runs = tracking.all_runs(cl, exp, f"tags.`{names.EXPERIMENT_KIND}` = \'x\'")\n'
                  'note = run.data.tags.get(EXPERIMENT_NOTE)\n')
    assert mixed_levels([ui]) == ["ui.py:1: experiment tags read with ['RUN_KIND']",
                                  "ui.py:2: experiment tags read with ['RUN_KIND']",
                                  "ui.py:3: run tags read with ['EXPERIMENT_KIND']",
                                  "ui.py:4: run tags read with ['EXPERIMENT_NOTE']"]


def test_the_two_levels_have_names_that_say_which():
    assert not hasattr(names, "KIND") and names.RUN_KIND == "polyprune.kind"
    assert all(k.startswith("EXPERIMENT_") for k in EXPERIMENT_LEVEL - {"MODEL_DEVELOPMENT"})
    assert not {k for k in CONSTANTS if k.startswith("EXPERIMENT_") and k != "EXPERIMENT_TAGS"} - EXPERIMENT_LEVEL
