"""README and docs/ as a newcomer follows them (issue 30): every shell snippet of README parses as
shell, every `polyprune` command in it is one the CLI accepts, and every relative link and every repo
path named in README and docs/*.md exists. Each test lists everything it finds wrong at once, so a
move of files shows all the pages to fix in one run."""

from __future__ import annotations

import contextlib
import glob
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = {"polyprune", "python", "python3", "pip", "mlflow", "ray"}
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}
SEPARATORS = {"&&", "||", ";", "|", "&"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Page:
    path: Path
    prose: str  # the page with its fenced blocks blanked (line numbers kept)
    blocks: list[tuple[str, int, list[str]]]  # (fence language, first line number, lines)

    def line_of(self, offset: int) -> int:
        return self.prose.count("\n", 0, offset) + 1

    def where(self, line: int) -> str:
        return f"{self.path.relative_to(ROOT)}:{line}"


def read_page(path: Path) -> Page:
    prose, blocks, block = [], [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if block is None and m:
            block = (m.group(2).lower(), n + 1, [], m.group(1))
            prose.append("")
        elif block is not None:
            if line.strip() == block[3]:
                blocks.append(block[:3])
                block = None
            else:
                block[2].append(line)
            prose.append("")
        else:
            prose.append(line)
    assert block is None, f"{path.name}: a fence opened at line {block[1] - 1} never closes"
    return Page(path, "\n".join(prose), blocks)


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [read_page(p) for p in PAGES]


# ---------------------------------------------------------------- shell snippets of README


def logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Lines with their `\\`-continuations joined, each with the number of its first line."""
    out, cur, start = [], "", first
    for n, line in enumerate(lines, first):
        if not cur:
            start = n
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append((start, cur + line))
            cur = ""
    if cur:
        out.append((start, cur))
    return out


def commands(line: str) -> list[list[str]]:
    """The simple commands of one logical shell line (comments dropped), each as its words; the
    command after `--` (`ray job submit ... -- polyprune sweep ...`) as one more."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur = [], []
    for word in lex:
        if word in SEPARATORS:
            out.append(cur)
            cur = []
        else:
            cur.append(word)
    out.append(cur)
    for words in list(out):
        if "--" in words and words[words.index("--") + 1:][:1] and words[words.index("--") + 1] in PROGRAMS:
            out.append(words[words.index("--") + 1:])
    # leading VAR=value assignments are not the command
    return [ws[next((i for i, w in enumerate(ws) if not re.fullmatch(r"\w+=\S*", w)), len(ws)):] for ws in out if ws]


@dataclass
class Snippet:
    where: str
    text: str  # what bash -n reads
    lines: list[tuple[int, str]]  # its logical lines, with their line numbers


def snippets(page: Page) -> list[Snippet]:
    """Fenced shell blocks (whole) and the command lines of plain fenced blocks and inline code that
    start with one of PROGRAMS."""
    out = []
    for lang, first, lines in page.blocks:
        if lang not in SHELL_FENCES:
            continue
        logical = logical_lines(lines, first)
        if lang == "":  # plain block: only its lines that are commands of ours (not program output)
            logical = [(n, l) for n, l in logical if l.split()[:1] and l.split()[0] in PROGRAMS]
            out += [Snippet(page.where(n), l, [(n, l)]) for n, l in logical]
        elif any(ws and ws[0] in PROGRAMS for _, l in logical for ws in commands(l)):
            out.append(Snippet(page.where(first), "\n".join(lines), logical))
    for m in re.finditer(r"`([^`]+)`", page.prose):
        text = " ".join(m.group(1).split())
        if len(text.split()) > 1 and text.split()[0] in PROGRAMS:
            n = page.line_of(m.start())
            out.append(Snippet(page.where(n), text, [(n, text)]))
    return out


@pytest.fixture(scope="module")
def readme_snippets(pages) -> list[Snippet]:
    found = snippets(pages[0])
    assert len(found) >= 10, found  # the extraction itself works: README has more than this
    return found


def test_every_readme_shell_snippet_parses(readme_snippets):
    bad = []
    for s in readme_snippets:
        done = subprocess.run(["bash", "-n"], input=s.text, capture_output=True, text=True, timeout=30)
        if done.returncode:
            bad.append(f"{s.where}: bash -n: {done.stderr.strip()}")
        for n, line in s.lines:
            try:
                for words in commands(line):
                    if words[0].startswith("-"):  # a continuation line whose `\` went missing
                        bad.append(f"{s.where} (line {n}): a command starts with {words[0]!r}: "
                                   "the line before it lacks its trailing `\\`")
            except ValueError as e:
                bad.append(f"{s.where} (line {n}): {e}")
    assert not bad, "README snippets that break when pasted:\n" + "\n".join(bad)


def subparsers(parser):
    return next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices


def flag_in_help(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def check_polyprune(words: list[str], parser) -> list[str]:
    """What is wrong with one `polyprune ...` command: an unknown command, a flag its --help does not
    list, or (for a command without [optional] parts) what argparse refuses."""
    args = words[1:]
    sub_at = next((i for i, w in enumerate(args) if not w.startswith("-")), None)
    top_help = parser.format_help()
    bad = [f"--{f}" for w in args[:sub_at] for f in re.findall(r"--([\w-]+)", w) if not flag_in_help(f"--{f}", top_help)]
    if sub_at is None:
        return bad
    sub, rest = args[sub_at], args[sub_at + 1:]
    choices = subparsers(parser)
    if sub not in choices:
        return bad + [f"no command {sub!r} (polyprune has {', '.join(choices)})"]
    help_text = choices[sub].format_help()
    bad += [f"polyprune {sub} --help lists no --{f}" for w in rest for f in re.findall(r"(?<![\w-])--([\w-]+)", w)
            if not flag_in_help(f"--{f}", help_text)]
    # a whole invocation (not a name in prose, `polyprune report`, nor a synopsis with [optional] parts)
    if not bad and rest and not any(w.startswith("[") or w.endswith("]") for w in rest):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(args)
            except SystemExit as e:
                if e.code:
                    bad.append(f"the parser refuses it: {err.getvalue().strip()}")
    return bad


def test_every_polyprune_command_in_readme_is_accepted_by_the_cli(readme_snippets):
    parser = build_parser()
    bad, seen = [], 0
    for s in readme_snippets:
        for n, line in s.lines:
            for words in commands(line):
                if words[0] == "polyprune":
                    seen += 1
                    bad += [f"{s.where} (line {n}): {' '.join(words)}\n    {why}" for why in check_polyprune(words, parser)]
    assert seen >= 20, seen  # the commands were found at all
    assert not bad, "README's polyprune commands the CLI does not accept:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for():
    """The rules above on known-bad input: a lost `\\`, an unknown flag, an unknown command."""
    broken = ["mlflow server --backend-store-uri x \\", "    --artifacts-destination y   # a comment", "    --host 0.0.0.0"]
    starts = [ws[0] for _, l in logical_lines(broken, 1) for ws in commands(l)]
    assert starts == ["mlflow", "--host"]
    parser = build_parser()
    assert check_polyprune(["polyprune", "sweep", "f.yaml", "--dry-run"], parser) == []
    assert check_polyprune(["polyprune", "sweep", "f.yaml", "--dryrun"], parser) == ["polyprune sweep --help lists no --dryrun"]
    assert check_polyprune(["polyprune", "swep", "f.yaml"], parser)[0].startswith("no command 'swep'")
    assert check_polyprune(["polyprune", "search", "F", "[--n-trials", "N]"], parser) == []
    assert check_polyprune(["polyprune", "compare", "A"], parser)[0].startswith("the parser refuses it")
    assert commands("HF_HOME=/x ray job submit --address A -- polyprune sweep s.yaml  # c")[1] == ["polyprune", "sweep", "s.yaml"]
    tops = top_level()
    assert repo_path("sweep/worker.py:CellRunner", tops) == Path("orchestrator/sweep/worker.py")
    assert not exists(repo_path("sweep/no_such_module.py", tops))
    assert [repo_path(p, tops) for p in ("tasks/pruning/NAME.py", "runs/x", "sweeps/mlflow.db", "report/report.html")] == [None] * 4
    assert exists(Path("benchmarks/results/search_efficiency_samplers.{json,md}"))
    assert dotted_name("sweep.yaml") is None
    assert dotted_name("tasks.pruning.base.Method(x)") == ("tasks.pruning.base.Method", ROOT / "tasks/pruning/base.py", ["Method"])
    assert dotted_name("orchestrator.nowhere.f")[1] is None
    assert dotted_name("sweep.nowhere.f")[1:] == (ROOT / "orchestrator/sweep/__init__.py", ["nowhere", "f"])
    assert not defines('"""the record of a cell"""', "record") and defines("from .x import (\n    a,\n    record,\n)", "record")
    assert slug("Sweeps on Ray: `polyprune sweep`") == "sweeps-on-ray-polyprune-sweep"


# ---------------------------------------------------------------- links and paths in README and docs/


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Page) -> set[str]:
    out, seen = set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", page.prose, re.M):
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def test_every_relative_link_and_anchor_exists(pages):
    by_path = {p.path.resolve(): p for p in pages}
    bad, seen = [], 0
    for page in pages:
        for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", page.prose):
            target = m.group(1)
            if re.match(r"[a-z][\w+.-]*:", target):  # https:, mailto:, ...
                continue
            seen += 1
            file, _, anchor = target.partition("#")
            path = (page.path.parent / file).resolve() if file else page.path.resolve()
            where = page.where(page.line_of(m.start()))
            if not path.exists():
                bad.append(f"{where}: {target}: no such file")
            elif anchor and path.suffix == ".md":
                linked = by_path.get(path) or read_page(path)
                if anchor not in anchors(linked):
                    bad.append(f"{where}: {target}: {path.name} has no heading with anchor #{anchor}")
    assert seen >= 30, seen
    assert not bad, "broken links:\n" + "\n".join(bad)


def top_level() -> set[str]:
    """The repository's own top-level names (tracked by git where it is a checkout): a path naming one
    of them is a repo path; `runs/x`, `report/` or `.venv/...` are the user's."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
        names = {f.split("/")[0] for f in files.splitlines()}
    except (OSError, subprocess.SubprocessError):
        names = set()
    return names or {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".ci"}


PACKAGES = ("orchestrator", "tasks")  # `sweep/worker.py` in prose is orchestrator/sweep/worker.py
PATHISH = re.compile(r"^((?:\.?[\w-]+/)+[\w.*{},-]*)")
RUNTIME = (".db",)  # what a run writes beside its file (sweeps/mlflow.db): named, never shipped
PLACEHOLDER = re.compile(r"\b(NAME|FILE|DIR|OUT|CHECKOUT|VERSION)\b")  # tasks/pruning/NAME.py: a template


def expand(path: str) -> list[str]:
    """`a.{json,md}` -> a.json, a.md."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",") for x in expand(path[:m.start()] + alt + path[m.end():])]


def repo_path(text: str, tops: set[str]) -> Path | None:
    """The repo path `text` names (a backticked span or a command's word), or None if it names none."""
    m = PATHISH.match(text.strip())
    if not m or m.group(1).endswith(RUNTIME) or PLACEHOLDER.search(m.group(1)):
        return None
    path = m.group(1)
    first = path.split("/")[0]
    if first in tops:
        return Path(path)
    if not path.endswith((".py", "/")):  # `report/report.html`: a user's folder, not orchestrator/report
        return None
    for package in PACKAGES:
        if (ROOT / package / first).is_dir() or (first in ("sweep", "search", "engine") and package == "orchestrator"):
            return Path(package) / path
    return None


def exists(path: Path) -> bool:
    return any(glob.glob(str(ROOT / p)) if "*" in p else (ROOT / p).exists() for p in expand(str(path)))


def named_paths(page: Page, tops: set[str]) -> list[tuple[int, str, Path]]:
    """(line, as written, repo path) for each backticked repo path of the page and each repo path a
    fenced shell block's commands name."""
    out = []
    for m in re.finditer(r"`([^`]+)`", page.prose):
        for word in m.group(1).split():
            if (path := repo_path(word, tops)) is not None:
                out.append((page.line_of(m.start()), word, path))
    for lang, first, lines in page.blocks:
        if lang in SHELL_FENCES - {""}:
            for n, line in logical_lines(lines, first):
                for words in commands(line):
                    out += [(n, w, p) for w in words[1:] if (p := repo_path(w, tops)) is not None]
    return out


def test_every_repo_path_named_in_readme_and_docs_exists(pages):
    tops = top_level()
    bad, seen = [], 0
    for page in pages:
        for n, written, path in named_paths(page, tops):
            seen += 1
            if not exists(path):
                bad.append(f"{page.where(n)}: `{written}`" + ("" if str(path) == written.rstrip(":,.") else f" ({path})"))
    assert seen >= 100, seen
    assert not bad, f"{len(bad)} paths named in README / docs that do not exist:\n" + "\n".join(bad)


SUBPACKAGES = ("sweep", "search", "engine", "cli", "report")  # `sweep.cells.prune_spec` in prose: orchestrator's
DOTTED = re.compile(r"^((?:orchestrator|tasks|search_spaces|" + "|".join(SUBPACKAGES) + r")(?:\.\w+)+)(?:\(.*)?$")
SUFFIXES = ("yaml", "yml", "py", "md", "json", "jsonl", "db", "html", "csv", "png", "txt", "log")  # sweep.yaml: a file


def dotted_name(text: str) -> tuple[str, Path | None, list[str]] | None:
    """(dotted name, its module's file or None where none exists, the names it takes from that module)
    for a span naming a module or a name in one (`tasks.pruning.base.Method`, `sweep.worker.CellRunner`)."""
    m = DOTTED.match(text.strip())
    if not m or m.group(1).rsplit(".", 1)[1] in SUFFIXES:
        return None
    parts = m.group(1).split(".")
    if parts[0] in SUBPACKAGES:
        parts = ["orchestrator", *parts]
    base, i = ROOT / parts[0], 1
    while i < len(parts) and ((base / parts[i]).is_dir() or (base / f"{parts[i]}.py").exists()):
        base = base / parts[i] if (base / parts[i]).is_dir() else base / f"{parts[i]}.py"
        i += 1
    if i == 1:  # not even the first module under the package exists
        return m.group(1), None, parts[1:]
    module = base / "__init__.py" if base.is_dir() else base
    return m.group(1), module, parts[i:]


def defines(text: str, name: str) -> bool:
    """Does a package's __init__ define or import `name` (not merely mention it in a docstring)?"""
    n = re.escape(name)
    return re.search(rf"^\s*(def|class)\s+{n}\b|^{n}\s*[:=]|^(from|import)\b[^\n]*\b{n}\b|^\s+{n},", text, re.M) is not None


def test_every_module_and_name_named_in_readme_and_docs_exists(pages):
    """`orchestrator.sweep.scheduler.run_cells` names a module (it must exist) and a name in it (it
    must still occur in that module's text: a rename or a move shows here)."""
    bad, seen = [], 0
    for page in pages:
        for m in re.finditer(r"`([^`]+)`", page.prose):
            found = dotted_name(m.group(1))
            if found is None:
                continue
            seen += 1
            name, module, attrs = found
            where = page.where(page.line_of(m.start()))
            if module is None or not module.exists():
                bad.append(f"{where}: `{name}`: no such module")
            elif module.name == "__init__.py" and attrs and not defines(module.read_text(), attrs[0]):
                gone = module.parent.relative_to(ROOT) / f"{attrs[0]}.py"
                bad.append(f"{where}: `{name}`: no module {gone} (nor a name {attrs[0]!r} in its package)")
            elif missing := [a for a in attrs[:2] if not re.search(rf"\b{re.escape(a)}\b", module.read_text())]:
                bad.append(f"{where}: `{name}`: {module.relative_to(ROOT)} has no {missing[0]!r}")
    assert seen >= 10, seen
    assert not bad, f"{len(bad)} modules or names named in README / docs that do not exist:\n" + "\n".join(bad)
