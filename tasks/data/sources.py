"""Text sources. A source gives a language's documents for a split ("calib" or "eval");
the two splits of a source never share text.

- a local folder: `<lang>.txt` (documents separated by a blank line) or `<lang>.jsonl`
  (field `text`); held-out text from `<lang>.eval.txt|jsonl` if present, else the last
  10% of the documents (a single document is cut at 90% of its length);
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

SPLITS = ("calib", "eval")
HUB = Registry("data source")  # name -> function(lang, split) -> list[str]
MAX_HUB_DOCS = {"calib": 5000, "eval": 500}


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
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and not p.stem.endswith(".eval"))
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
        docs = self._read(lang) or []
        held_out = self._read(f"{lang}.eval")
        if held_out is not None:
            return docs if split == "calib" else held_out
        if len(docs) == 1:
            text = docs[0]
            cut = text.rfind(" ", 0, int(len(text) * 0.9)) + 1 or int(len(text) * 0.9)
            docs = [text[:cut], text[cut:]]
        if len(docs) < 2:
            return []
        n_eval = max(1, round(len(docs) * 0.1))
        return docs[:-n_eval] if split == "calib" else docs[-n_eval:]


class BuiltinSource(Source):
    def __init__(self):
        from importlib.metadata import version

        from . import builtin

        self._builtin = builtin
        fp = json.dumps(["builtin", version("gflanguages"), version("django"), builtin.corpus_version()])
        super().__init__("builtin", fp, list(builtin.LANGUAGES))

    def documents(self, lang: str, split: str) -> list[str]:
        self.check_language(lang, "lang")
        return self._builtin.documents(lang, split)


class HubSource(Source):
    def __init__(self, name: str):
        super().__init__(name, json.dumps(["hub", name, MAX_HUB_DOCS]), None)
        self._fetch = HUB.get(name, "data")

    @functools.lru_cache(maxsize=64)
    def documents(self, lang: str, split: str) -> list[str]:
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
    # allenai/c4 has one config per mC4 language, with its own validation split.
    stream = _stream("allenai/c4", lang, split="train" if split == "calib" else "validation")
    return _take(stream, MAX_HUB_DOCS[split])


def _train_only(path: str, config: str, split: str) -> list[str]:
    # One split only: calibration from the head of the stream, held-out text right after it.
    stream = _stream(path, config, split="train")
    skip = 0 if split == "calib" else MAX_HUB_DOCS["calib"]
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
    # FLORES sentences are short; consecutive ones come from the same article, so join
    # them into documents long enough for calibration windows.
    return [" ".join(sentences[i:i + 10]) for i in range(0, len(sentences), 10)]


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
