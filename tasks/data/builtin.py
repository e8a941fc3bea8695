"""The built-in offline corpus: real human-written text that pip installs with polyprune.

Two pinned packages carry multilingual text, read here at run time (never copied
into the repository):
- gflanguages (Apache-2.0): UDHR samples for ~600 languages, a few hundred
  characters to 2K each;
- Django (BSD-3): its translation catalogs, `django/**/locale/<code>/LC_MESSAGES/
  django.po`, 7-27K characters of UI strings per language (msgids give English).

A language here is a Django locale (regional variants dropped, `zh_Hans` is
`zh`) plus that language's UDHR sample in the same script. The unit of text is a
paragraph (one catalog string or one UDHR line). A hash of the paragraph puts
~18% of them in the held-out part for good; a `calib` paragraph is dropped when it
shares a 32-byte window with held-out text of ANY language, because catalogs copy
placeholders and untranslated English and UDHR varieties are parallel text.
A second hash divides the held-out part into `valid` (what tuning looks at) and
`test` (what results quote), and a `valid` paragraph sharing a window with `test`
text of any language is dropped too, so tuning never sees text it is judged on.
The UDHR samples of all other languages form `rest_documents()`, filtered the
same way, for training the demo model.

`corpus_version()` identifies what training can see (calib and rest); carving
valid from test left it, and so the cached demo model, unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from ..errors import UserError

TARGETS = ("ar", "de", "en", "es", "ru", "sw", "zh", "hi", "fr", "ja")  # the papers' languages + hi, fr, ja
SPLITS = ("calib", "valid", "test")
HELD_OUT_SHARE = 0.18  # valid + test
VALID_SHARE = 0.5  # of the held-out paragraphs
WINDOW = 32  # bytes; a shared window this long counts as leaked text
DOC_CHARS = 1500  # consecutive paragraphs are grouped into documents of about this length
MIN_HELD_OUT_CHARS = 2000  # a language needs this much held-out text to be offered
PACKAGES = {"gflanguages": "Apache-2.0", "django": "BSD-3-Clause"}
BUILD = 2  # bump when calib or rest text changes, so caches (the demo model's too) are rebuilt
HELD_OUT_BUILD = 1  # bump when only the valid/test carving changes: the demo model stays valid


def cache_root() -> Path:
    """polyprune's cache folder (POLYPRUNE_CACHE, else ~/.cache/polyprune): every cache lives below it."""
    return Path(os.environ.get("POLYPRUNE_CACHE") or Path.home() / ".cache" / "polyprune")


def corpus_version() -> str:
    """Identifies the corpus: package versions and the construction; keys every cache built on it."""
    key = json.dumps({"build": BUILD, **{p: version(p) for p in PACKAGES}}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def held_out_version() -> str:
    """Identifies the whole corpus, held-out carving included; keys evaluation caches."""
    key = json.dumps({"corpus": corpus_version(), "held_out": HELD_OUT_BUILD, "valid_share": VALID_SHARE})
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# --- reading the packages ----------------------------------------------------

_PO_LINE = re.compile(r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+"(.*)"$|^"(.*)"$')
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), s)


def read_po(path: Path) -> list[dict[str, list[str]]]:
    """The entries of a gettext catalog as {keyword: [strings]}; fuzzy entries and the header are skipped."""
    entries, entry, key, fuzzy = [], {}, None, False

    def flush():
        nonlocal entry, fuzzy
        if entry.get("msgid", [""])[0] and not fuzzy:
            entries.append(entry)
        entry, fuzzy = {}, False

    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        line = line.strip()
        if not line:
            flush()
        elif line.startswith("#"):
            fuzzy |= line.startswith("#,") and "fuzzy" in line
        elif m := _PO_LINE.match(line):
            if m.group(1):
                key = "msgstr" if m.group(1).startswith("msgstr") else m.group(1)
                entry.setdefault(key, []).append(_unescape(m.group(2)))
            else:  # continuation of the last string
                entry[key][-1] += _unescape(m.group(3))
    return entries


def _django_paragraphs() -> dict[str, list[tuple[str, str]]]:
    """(source, paragraph) per language code from Django's catalogs."""
    import django

    root = Path(django.__file__).parent
    out: dict[str, list[tuple[str, str]]] = {}
    for po in sorted(root.glob("**/locale/*/LC_MESSAGES/django.po")):
        locale = po.parts[-3]
        code = "zh" if locale == "zh_Hans" else locale
        if "_" in code:  # regional variants repeat their base language
            continue
        source = "django:" + "/".join(po.relative_to(root).parts[:-4])  # the app: conf, contrib/admin, ...
        for e in read_po(po):
            # English is the msgids; every catalog shares them, so the en catalogs are read for that.
            strings = e["msgid"] + e.get("msgid_plural", []) if code == "en" else e.get("msgstr", [])
            out.setdefault(code, []).extend((source, s.strip()) for s in strings if s.strip())
    return out


def _udhr_paragraphs() -> dict[str, list[tuple[str, str]]]:
    """UDHR lines per gflanguages record id ("ar_Arab"); fields that are prefixes of longer ones dropped."""
    from gflanguages import LoadLanguages

    out = {}
    for rec_id, rec in sorted(LoadLanguages().items()):
        if not rec.HasField("sample_text"):
            continue
        lines = {ln.strip() for _, v in rec.sample_text.ListFields() for ln in v.split("\n") if len(ln.strip()) >= 16}
        kept = [ln for ln in sorted(lines, key=lambda s: (-len(s), s)) if not any(ln in o for o in lines if o != ln)]
        out[rec_id] = [("gflanguages:udhr", ln) for ln in kept]
    return out


def _script_profile(text: str) -> Counter:
    """Share of letters per Unicode script name ("LATIN", "CJK", "KATAKANA", ...).

    Letters too new for this Python's Unicode tables (Todhri) count as script "?", so they never match.
    """
    letters = (c for c in text if c.isalpha() or unicodedata.category(c) == "Cn")
    scripts = Counter(unicodedata.name(c, "?").split()[0] for c in letters)
    total = sum(scripts.values()) or 1
    return Counter({k: v / total for k, v in scripts.items()})


def _same_script_record(code: str, django_text: str, records: dict[str, list]) -> str | None:
    """The gflanguages record of `code` written like its Django text (en_Latn not en_Shaw, ja_Jpan not ja_Kana).

    Scored by the overlap of script profiles; equal scripts (ka_Geor, ka_Geok are both "GEORGIAN" to
    Unicode names) go to the longer sample. Catalogs carry Latin placeholders, hence the low bar.
    """
    target = _script_profile(django_text)
    scored = [
        (sum((_script_profile(" ".join(p for _, p in paras)) & target).values()), len(paras), rec_id)
        for rec_id, paras in records.items()
        if rec_id.split("_")[0] == code
    ]
    best = max(scored, default=None)
    return best[2] if best and best[0] > 0.3 else None


# --- split, leak filter, documents ---------------------------------------------

def _is_held_out(paragraph: str) -> bool:
    # Identical text lands on the same side in every language, so copies never straddle the split.
    return int(hashlib.sha256(paragraph.encode()).hexdigest()[:8], 16) < HELD_OUT_SHARE * 2**32


def _is_valid(paragraph: str) -> bool:
    # Salted, so this choice is independent of _is_held_out's (an unsalted hash below 0.18 would be skewed).
    return int(hashlib.sha256(b"valid/" + paragraph.encode()).hexdigest()[:8], 16) < VALID_SHARE * 2**32


def _windows(text: str) -> set[bytes]:
    b = text.encode()
    return {b[i : i + WINDOW] for i in range(len(b) - WINDOW + 1)}


def _leaks(text: str, held_out: set[bytes]) -> bool:
    b = text.encode()
    return any(b[i : i + WINDOW] in held_out for i in range(len(b) - WINDOW + 1))


def _group(paragraphs: list[str]) -> list[str]:
    """Consecutive paragraphs joined by newlines into documents of about DOC_CHARS characters."""
    docs, cur = [], []
    for p in paragraphs:
        cur.append(p)
        if sum(map(len, cur)) + len(cur) >= DOC_CHARS:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        if docs and sum(map(len, cur)) < DOC_CHARS // 4:
            docs[-1] += "\n" + "\n".join(cur)  # a short tail would be too short to sample windows from
        else:
            docs.append("\n".join(cur))
    return docs


def _build() -> dict:
    django_paras = _django_paragraphs()
    udhr = _udhr_paragraphs()
    langs: dict[str, list[tuple[str, str]]] = {}
    used = set()
    for code, paras in django_paras.items():
        rec = _same_script_record(code, "".join(p for _, p in paras), udhr)
        langs[code] = (udhr[rec] if rec else []) + paras
        used |= {rec}

    def dedup(paras):
        seen = set()
        return [(s, p) for s, p in paras if not (p in seen or seen.add(p))]

    langs = {c: dedup(p) for c, p in langs.items()}
    held_out = set().union(*(_windows(p) for paras in langs.values() for _, p in paras if _is_held_out(p)))
    test_windows = set().union(*(_windows(p) for paras in langs.values() for _, p in paras
                                 if _is_held_out(p) and not _is_valid(p)))
    corpus = {"version": held_out_version(), "languages": {}, "rest": []}
    for code, paras in sorted(langs.items()):
        ev = [p for _, p in paras if _is_held_out(p)]
        cal = [p for _, p in paras if not _is_held_out(p) and not _leaks(p, held_out)]
        # Offered languages (and so the demo model's training text) depend on the whole held-out part only.
        if sum(map(len, ev)) < MIN_HELD_OUT_CHARS:
            continue
        test = [p for p in ev if not _is_valid(p)]
        valid = [p for p in ev if _is_valid(p) and not _leaks(p, test_windows)]
        sources = sorted({s for s, _ in paras})
        corpus["languages"][code] = {"calib": _group(cal), "valid": _group(valid), "test": _group(test), "sources": sources}
    for rec_id in sorted(set(udhr) - used):
        paras = [p for _, p in udhr[rec_id] if not _leaks(p, held_out)]
        corpus["rest"].extend(_group(paras))
    return corpus


@functools.lru_cache(maxsize=1)
def _corpus() -> dict:
    path = cache_root() / "builtin" / f"corpus-{held_out_version()}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    corpus = _build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a concurrent or killed build never leaves half a file
    return corpus


# --- public API ---------------------------------------------------------------

def languages() -> tuple[str, ...]:
    return tuple(sorted(_corpus()["languages"]))


def documents(lang: str, split: str) -> list[str]:
    """The documents of one language and split ("calib", "valid" or "test"), ~DOC_CHARS characters each."""
    if split not in SPLITS:
        raise UserError("split", f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    table = _corpus()["languages"]
    if lang not in table:
        raise UserError("lang", f"no built-in text for {lang!r}; allowed: {', '.join(sorted(table))}")
    return list(table[lang][split])


def rest_documents() -> list[str]:
    """UDHR text of the languages not in LANGUAGES: training-only, leak-filtered against all held-out text."""
    return list(_corpus()["rest"])


def describe() -> dict:
    """Characters per language and split, the sources, and the packages' versions and licences."""
    info: dict = {
        lang: {
            **{f"{split}_chars": sum(map(len, v[split])) for split in SPLITS},
            "sources": v["sources"],
        }
        for lang, v in _corpus()["languages"].items()
    }
    info["packages"] = {p: {"version": version(p), "licence": lic} for p, lic in PACKAGES.items()}
    return info


def __getattr__(name: str):
    # LANGUAGES is computed on first use, so importing this module reads nothing.
    if name == "LANGUAGES":
        return languages()
    raise AttributeError(name)
