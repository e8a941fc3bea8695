"""polyprune's own offline lm-eval tasks, generated at run time from the built-in
corpus's held-out `test` split, so no third-party text is committed.

    path = offline_task_dir(seed=0)          # ~/.cache/polyprune/lm_tasks/<hash>/
    TaskManager(include_path=str(path))      # polyprune_offline, polyprune_cont, ...

Two kinds of 4-way multiple-choice tasks per language, scored by log-likelihood:
- `polyprune_cont_<lang>` (XStoryCloze style): a 100-200 byte span of real text,
  then its true 30-60 byte continuation vs 3 spans of about the same byte length
  from elsewhere in the same language's held-out text;
- `polyprune_langid_<lang>`: the same kind of context, its true continuation vs
  spans of about the same byte length from 3 other languages.
Groups: `polyprune_cont`, `polyprune_langid`, and `polyprune_offline` (both).

The folder is content-addressed (generator version, seed, languages, templates
and the text itself), written atomically, and reused when it already exists.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import yaml

from ..data.builtin import cache_root
from ..errors import UserError

OFFLINE_PREFIX = "polyprune_"  # every offline task and group is named so (lmeval.task_manager indexes them alone by it)
OFFLINE_GROUP = f"{OFFLINE_PREFIX}offline"
KINDS = ("cont", "langid")
GENERATOR_VERSION = 1  # bump when the item construction changes
N_ITEMS = 64  # per language and kind
CONTEXT_BYTES = (100, 200)
CONTINUATION_BYTES = (30, 60)
N_DISTRACTORS = 3
MIN_BYTES = 1500  # of a language's test text (sw has ~1.7K); languages with less get no tasks; items overlap more
# Scripts written without spaces between words: any character boundary is a cut.
UNSPACED = {"zh", "ja", "th", "lo", "km", "my", "bo"}
TEMPLATES = Path(__file__).parent / "lm_tasks"


def _corpus_languages() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the built-in corpus's languages with enough test text, the default ones: the papers' languages)."""
    from ..data import builtin  # imported late: the corpus is only needed when generating

    available = tuple(lang for lang in builtin.LANGUAGES if _nbytes(_eval_documents(lang)) >= MIN_BYTES)
    targets = tuple(lang for lang in getattr(builtin, "TARGETS", available) if lang in available)
    return available, targets or available


def _normalised(docs: list[str]) -> str:
    return " ".join(" ".join(d.split()) for d in docs if d.strip())


def _nbytes(docs: list[str]) -> int:
    return len(_normalised(docs).encode("utf-8"))


def _eval_documents(lang: str) -> list[str]:
    from ..data import builtin

    return builtin.documents(lang, "test")


def offline_task_dir(seed: int = 0, langs=None) -> Path:
    """The folder of generated task YAMLs + jsonl data; created if missing. Pass it
    as an lm-eval include path. Tasks exist for every language of the built-in
    corpus; the groups cover `langs` (default: the papers' ten languages)."""
    available, targets = _corpus_languages()
    langs = list(targets) if langs is None else [langs] if isinstance(langs, str) else list(langs)
    unknown = [lang for lang in langs if lang not in available]
    if unknown or not langs:
        raise UserError("tasks", f"offline tasks exist for {', '.join(available)}; got {unknown or 'no language'}")
    corpus = {lang: _eval_documents(lang) for lang in available}
    return write_offline_tasks(cache_root() / "lm_tasks", corpus, group_langs=langs, distractor_langs=targets, seed=seed)


def write_offline_tasks(root: Path, corpus: dict[str, list[str]], group_langs=None, distractor_langs=None, seed: int = 0) -> Path:
    """Generate the task folder under `root` from `corpus` ({lang: eval documents}):
    tasks for every corpus language, groups over `group_langs` (default: all);
    langid distractors come from `distractor_langs` (default: all), a fixed pool,
    so a language's task does not depend on which others were asked for."""
    langs = sorted(corpus)
    group_langs = list(group_langs or langs)
    pool = sorted(distractor_langs or langs)
    streams = {lang: _Text(lang, docs) for lang, docs in sorted(corpus.items())}
    templates = {p.name: p.read_text(encoding="utf-8") for p in sorted(TEMPLATES.glob("_*_template_yaml"))}
    key = {
        "version": GENERATOR_VERSION, "seed": seed, "groups": group_langs, "pool": pool, "n_items": N_ITEMS,
        "templates": templates, "text": {lang: hashlib.sha256(t.s.encode()).hexdigest() for lang, t in sorted(streams.items())},
    }
    final = Path(root) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if final.is_dir():
        return final

    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))  # a sibling: never inside an include path
    try:
        for name, text in templates.items():
            (tmp / name).write_text(text, encoding="utf-8")
        groups = {kind: [] for kind in KINDS}
        for kind in KINDS:
            for lang in langs:
                task = f"{OFFLINE_PREFIX}{kind}_{lang}"
                rng = random.Random(f"{seed}/{kind}/{lang}")  # string seeds are stable across runs
                items = _items(kind, lang, streams, pool, rng)
                with open(tmp / f"{task}.jsonl", "w", encoding="utf-8") as f:
                    for item in items:
                        f.write(json.dumps(item, ensure_ascii=False) + "\n")
                # data_files must be absolute: `datasets` resolves relative paths against the cwd.
                _dump(tmp / f"{task}.yaml", {
                    "include": f"_polyprune_{kind}_template_yaml", "task": task,
                    "dataset_kwargs": {"data_files": {"test": str(final / f"{task}.jsonl")}},
                })
                if lang in group_langs:
                    groups[kind].append(task)
            groups[kind].sort(key=lambda t: group_langs.index(t.rsplit("_", 1)[1]))
            _dump(tmp / f"_polyprune_{kind}.yaml", _group(f"{OFFLINE_PREFIX}{kind}", groups[kind]))
        _dump(tmp / f"_{OFFLINE_GROUP}.yaml", _group(OFFLINE_GROUP, [f"{OFFLINE_PREFIX}{kind}" for kind in KINDS]))
        try:
            os.rename(tmp, final)  # atomic: readers see a complete folder or none
        except OSError:
            if not final.is_dir():  # not a lost race with another process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _group(name: str, tasks: list[str]) -> dict:
    # Unweighted mean: every language (every kind) counts the same.
    return {
        "group": name, "task": tasks,
        "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": False} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


def _dump(path: Path, obj: dict) -> None:
    path.write_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), encoding="utf-8")


class _Text:
    """A language's held-out text as one whitespace-normalised string, with the
    places where a span may start or end ("cuts") and byte offsets (the demo
    model is byte-level, so lengths are measured in UTF-8 bytes)."""

    def __init__(self, lang: str, docs: list[str]):
        self.s = _normalised(docs)
        self.cum = [0]
        for ch in self.s:
            self.cum.append(self.cum[-1] + len(ch.encode("utf-8")))
        if lang in UNSPACED:  # any character boundary, but no span starts with a (document-joining) space
            self.cuts = [i for i in range(1, len(self.s)) if self.s[i] != " "]
        else:  # cut before a space: a continuation then starts with " word"
            self.cuts = [i for i, ch in enumerate(self.s) if ch == " "]
        self.cut_bytes = [self.cum[c] for c in self.cuts]
        if len(self.cuts) < 20 or self.cum[-1] < MIN_BYTES:
            raise RuntimeError(f"held-out text of {lang!r} is too short for offline tasks ({self.cum[-1]} bytes)")

    @property
    def nbytes(self) -> int:
        return self.cum[-1]

    def cut_near(self, byte: int) -> int:
        """The cut (character index) whose byte offset is nearest `byte`."""
        i = bisect.bisect_left(self.cut_bytes, byte)
        best = min((j for j in (i - 1, i) if 0 <= j < len(self.cuts)), key=lambda j: abs(self.cut_bytes[j] - byte))
        return self.cuts[best]

    def span(self, start: int, nbytes: int) -> tuple[int, int]:
        end = self.cut_near(self.cum[start] + nbytes)
        return start, end

    def random_cut(self, rng: random.Random) -> int:
        return self.cuts[rng.randrange(len(self.cuts))]


def _items(kind: str, lang: str, streams: dict[str, _Text], pool: list[str], rng: random.Random) -> list[dict]:
    text = streams[lang]
    window = CONTEXT_BYTES[1] + CONTINUATION_BYTES[1]
    segment = text.nbytes / N_ITEMS  # spread items over the whole text; they overlap only if it is short
    items, seen = [], set()
    for i in range(N_ITEMS):
        lo = int(i * segment)
        hi = max(lo, min(int((i + 1) * segment) - window, text.nbytes - window))
        start = text.cut_near(rng.randint(lo, hi))
        start += text.s[start] == " "  # a context starts with a word, not the space before it
        want_context, want_cont = rng.randint(*CONTEXT_BYTES), rng.randint(*CONTINUATION_BYTES)
        _, mid = text.span(start, want_context)
        _, end = text.span(mid, want_cont)
        # Near the end of the text a span comes out short: drop such items.
        if text.cum[mid] - text.cum[start] < 0.8 * want_context or text.cum[end] - text.cum[mid] < 0.8 * want_cont:
            continue
        if text.s[start:mid] in seen:
            continue
        context, true = text.s[start:mid], text.s[mid:end]
        if kind == "cont":
            wrong = _same_language(text, start, end, true, rng)
        else:
            true = true.strip()
            wrong = _other_languages(lang, streams, pool, true, rng)
        if wrong is None:
            continue
        choices = [true] + wrong
        rng.shuffle(choices)
        seen.add(context)
        items.append({"id": f"{kind}-{lang}-{i}", "context": context, "choices": choices, "label": choices.index(true)})
    return items


def _same_language(text: _Text, start: int, end: int, true: str, rng: random.Random) -> list[str] | None:
    """3 spans of about len(true) bytes from elsewhere in the text (never the item's own window)."""
    nbytes, out = len(true.encode()), []
    for _ in range(200):
        a, b = text.span(text.random_cut(rng), nbytes)
        cand = text.s[a:b]
        if text.cum[b] - text.cum[a] < 0.8 * nbytes or (a < end and b > start) or cand in out or cand == true or not cand.strip():
            continue
        out.append(cand)
        if len(out) == N_DISTRACTORS:
            return out
    return None


def _other_languages(lang: str, streams: dict[str, _Text], pool: list[str], true: str, rng: random.Random) -> list[str] | None:
    """One span of about len(true) bytes from each of 3 other languages of the pool."""
    others = [other for other in pool if other != lang and other in streams]
    nbytes, out = len(true.encode()), []
    for other in rng.sample(others, min(N_DISTRACTORS, len(others))):
        text = streams[other]
        for _ in range(50):
            a, b = text.span(text.random_cut(rng), nbytes)
            cand = text.s[a:b].strip()
            if len(cand.encode()) >= 0.7 * nbytes and cand not in out and cand != true:
                out.append(cand)
                break
    return out or None
