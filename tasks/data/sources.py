"""Text sources. A source gives a language's documents for a split: "calib" (what
calibration draws from), "valid" (what tuning and searches look at) and "test" (what
results quote). The three splits of a source never share text.

- a local folder: `<lang>.txt` (documents separated by a blank line) or `<lang>.jsonl`
  (field `text`); `valid` from `<lang>.valid.txt|jsonl` and `test` from
  `<lang>.test.txt|jsonl` when present, else slices of the documents: the last 10% are
  `test`, the 10% before them `valid` (too few documents: the text is cut by length);
- `builtin`: the offline corpus installed with polyprune (tasks/data/builtin.py);
- hub corpora streamed through `datasets`: mc4, culturax, wikipedia, flores.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from ..errors import UserError
from ..registry import Registry

SPLITS = ("calib", "valid", "test")
HUB = Registry("data source")  # name -> function(lang, split) -> list[str]
MAX_HUB_DOCS = {"calib": 5000, "valid": 500, "test": 500}
SLICE = 0.1  # share of a folder's documents sliced off for each of valid and test


def check_split(split: str, field: str = "split") -> str:
    if split not in SPLITS:
        raise UserError(field, f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split


class Source:
    def __init__(self, name: str, fingerprint: str, languages: list[str] | None):
        self.name = name
        self.fingerprint = fingerprint  # changes whenever the text could change; keys token caches
        self._languages = languages  # None: unknown up front (hub corpora)

    def languages(self) -> list[str] | None:
        return self._languages

    def check_language(self, lang: str, field: str) -> None:
        if self._languages is not None and lang not in self._languages:
            raise UserError(field, f"language {lang!r} is not in data source {self.name!r}; available: {', '.join(self._languages)}")

    def documents(self, lang: str, split: str) -> list[str]:
        raise NotImplementedError


class FolderSource(Source):
    def __init__(self, path: Path):
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and "." not in p.stem)
        old = sorted(p.name for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and p.stem.endswith(".eval"))
        if old:
            # Silently ignoring them would move the held-out text into calibration's slices.
            raise UserError("data", f"{old[0]} in {str(path)!r}: held-out files are now <lang>.valid.* and <lang>.test.*; rename it")
        langs = sorted({p.stem for p in files})
        if not langs:
            raise UserError("data", f"folder {str(path)!r} has no <lang>.txt or <lang>.jsonl files")
        stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file()]
        super().__init__(str(path), json.dumps(["folder", str(path.resolve()), stamp]), langs)
        self.path = path

    def _read(self, stem: str) -> list[str] | None:
        txt, jsonl = self.path / f"{stem}.txt", self.path / f"{stem}.jsonl"
        if txt.exists():
            parts = txt.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n")
            return [p.strip() for p in parts if p.strip()]
        if jsonl.exists():
            docs = []
            with jsonl.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            docs.append(json.loads(line)["text"])
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise UserError("data", f"{jsonl}:{i}: each line must be a JSON object with a 'text' field") from None
            return docs
        return None

    def documents(self, lang: str, split: str) -> list[str]:
        self.check_language(lang, "lang")
        check_split(split)
        given = {s: self._read(f"{lang}.{s}") for s in ("valid", "test")}
        if split != "calib" and given[split] is not None:
            return given[split]
        sliced = [s for s in ("valid", "test") if given[s] is None]  # taken from the end, test last
        docs = self._read(lang) or []
        if 0 < len(docs) <= len(sliced):  # too few documents to slice: cut the text by length instead
            docs = _cut("\n\n".join(docs), [1 - SLICE * k for k in range(len(sliced), 0, -1)])
        if len(docs) <= len(sliced):
            return []
        n = max(1, round(len(docs) * SLICE))
        parts = {"calib": docs[: len(docs) - n * len(sliced)]}
        for i, s in enumerate(sliced):
            start = len(docs) - n * (len(sliced) - i)
            parts[s] = docs[start : start + n]
        return parts[split]


def _cut(text: str, fractions: list[float]) -> list[str]:
    """`text` cut at these fractions of its length (moved back to a space, so words stay whole)."""
    pieces, start = [], 0
    for f in fractions:
        cut = text.rfind(" ", start, int(len(text) * f)) + 1 or int(len(text) * f)
        pieces.append(text[start:cut])
        start = cut
    return pieces + [text[start:]]


class BuiltinSource(Source):
    def __init__(self):
        from importlib.metadata import version

        from . import builtin

        self._builtin = builtin
        fp = json.dumps(["builtin", version("gflanguages"), version("django"), builtin.held_out_version()])
        super().__init__("builtin", fp, list(builtin.LANGUAGES))

    def documents(self, lang: str, split: str) -> list[str]:
        self.check_language(lang, "lang")
        return self._builtin.documents(lang, check_split(split))


class HubSource(Source):
    def __init__(self, name: str):
        super().__init__(name, json.dumps(["hub", name, MAX_HUB_DOCS]), None)
        self._fetch = HUB.get(name, "data")

    @functools.lru_cache(maxsize=64)
    def documents(self, lang: str, split: str) -> list[str]:
        check_split(split)
        try:
            docs = self._fetch(lang, split)
        except UserError:
            raise
        except Exception as e:  # the hub says "no such config" in many ways
            raise UserError("data", f"could not stream {self.name!r} for language {lang!r}: {type(e).__name__}: {e}") from None
        if not docs:
            raise UserError("calib", f"data source {self.name!r} has no text for language {lang!r}")
        return docs


def _take(stream, n: int, skip: int = 0, field: str = "text") -> list[str]:
    out = []
    for i, row in enumerate(stream):
        if i >= skip + n:
            break
        if i >= skip and row.get(field):
            out.append(row[field])
    return out


def _stream(*args, **kwargs):
    import datasets  # imported here: most runs never touch the hub

    return datasets.load_dataset(*args, streaming=True, **kwargs)


@HUB.register("mc4")
def _mc4(lang: str, split: str) -> list[str]:
    # allenai/c4 has one config per mC4 language, with its own validation split: its head is
    # `valid`, the documents right after it `test`.
    if split == "calib":
        return _take(_stream("allenai/c4", lang, split="train"), MAX_HUB_DOCS["calib"])
    skip = 0 if split == "valid" else MAX_HUB_DOCS["valid"]
    return _take(_stream("allenai/c4", lang, split="validation"), MAX_HUB_DOCS[split], skip=skip)


def _train_only(path: str, config: str, split: str) -> list[str]:
    # One split only: consecutive slices of the stream, calib then valid then test.
    stream = _stream(path, config, split="train")
    skip = sum(MAX_HUB_DOCS[s] for s in SPLITS[: SPLITS.index(split)])
    return _take(stream, MAX_HUB_DOCS[split], skip=skip)


@HUB.register("culturax")
def _culturax(lang: str, split: str) -> list[str]:
    return _train_only("uonlp/CulturaX", lang, split)


@HUB.register("wikipedia")
def _wikipedia(lang: str, split: str) -> list[str]:
    return _train_only("wikimedia/wikipedia", f"20231101.{lang}", split)


FLORES_CODES = {
    "ar": "arb_Arab", "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn", "ru": "rus_Cyrl", "sw": "swh_Latn",
    "zh": "cmn_Hans", "hi": "hin_Deva", "fr": "fra_Latn", "ja": "jpn_Jpan",
}


@HUB.register("flores")
def _flores(lang: str, split: str) -> list[str]:
    code = FLORES_CODES.get(lang, lang)
    rows = _stream("openlanguagedata/flores_plus", code, split="dev" if split == "calib" else "devtest")
    sentences = [r["text"] for r in rows]
    if split != "calib":  # devtest's first half is `valid`, its second `test` (sentences align across languages)
        half = len(sentences) // 2
        sentences = sentences[:half] if split == "valid" else sentences[half:]
    # FLORES sentences are short; consecutive ones come from the same article, so join
    # them into documents long enough for calibration windows.
    return [" ".join(sentences[i:i + 10]) for i in range(0, len(sentences), 10)]


def named_source(data: str) -> bool:
    """A source known by name (the offline corpus, a registered hub corpus), rather than a folder."""
    return data == "builtin" or data in HUB


def get_source(data: str) -> Source:
    """Resolve SOURCE: 'builtin', a hub corpus name, or a local folder."""
    if data == "builtin":
        return BuiltinSource()
    if data in HUB:
        return HubSource(data)
    path = Path(os.path.expanduser(data))
    if path.is_dir():
        return FolderSource(path.resolve())
    raise UserError("data", f"{data!r} is not a folder, 'builtin', or one of: {', '.join(HUB.names())}")
