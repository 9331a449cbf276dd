"""`dnfbot corpus check`: what a maintainer must know before indexing a corpus.

Reports on the raw source (before cleaning): empty and near-empty articles, exact and near duplicates,
invisible characters, HTML/CSS leftovers, trailing like-count lines, and class labels that disagree with the
title/content — with what cleaning does about each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dnfbot.corpus.categories import categorize
from dnfbot.corpus.clean import (
    _LIKE_COUNT_RE,
    HTML_LEFTOVER_RE,
    INVISIBLE,
    bullet_ats,
    clean_text,
    clean_title,
    glued_endings,
)
from dnfbot.corpus.loaders import GUIDE_FIELDS, MIN_CHARS
from dnfbot.corpus.sentences import junk_counts
from dnfbot.errors import InputError
from dnfbot.io import iter_jsonl, read_json, read_text

NEAR_EMPTY_CHARS = 200
NEAR_DUP_JACCARD = 0.8
_INVISIBLE_NAMES = {
    "\u200b": "zero-width space",
    "\u200c": "zero-width non-joiner",
    "\u200d": "zero-width joiner",
    "\u2060": "word joiner",
    "\ufeff": "BOM / zero-width no-break space",
    "\u00ad": "soft hyphen",
}


@dataclass
class RawArticle:
    doc_id: str
    title: str
    raw: str
    label: str


def read_raw(path: Path) -> list[RawArticle]:
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if not isinstance(data, dict) or any(not isinstance(data.get(f), dict) for f in GUIDE_FIELDS):
            raise InputError(f"{path}: expected guide articles with {', '.join(GUIDE_FIELDS)} objects")
        return [
            RawArticle(str(k), str(data["title"].get(k, "")), str(v), str(data["category1"].get(k) or ""))
            for k, v in data["content"].items()
        ]
    if path.suffix.lower() == ".jsonl":
        return [
            RawArticle(
                str(r.get("id", i)),
                str(r.get("title", "")),
                str(r.get("text", "")),
                str((r.get("metadata") or {}).get("category3") or ""),
            )
            for i, r in enumerate(iter_jsonl(path))
        ]
    if path.is_dir():
        return [
            # read as index build reads them: a file it would refuse (not UTF-8) fails the check too
            RawArticle(p.relative_to(path).as_posix(), p.stem, read_text(p), "")
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.suffix.lower() in {".txt", ".md"}
        ]
    raise InputError(f"{path}: unknown corpus format")


def _shingles(text: str, n: int = 5) -> set[int]:
    compact = "".join(text.split())
    return {hash(compact[i : i + n]) for i in range(max(1, len(compact) - n + 1))}


def check(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: corpus not found")
    arts = read_raw(path)
    if not arts:  # nothing to check is a failed check (index build would refuse this corpus too)
        what = "no .txt or .md files in folder" if path.is_dir() else "no articles"
        raise InputError(f"{path}: {what}")
    cleaned = {a.doc_id: clean_text(a.raw, like_count=path.suffix == ".json") for a in arts}
    empty = [a.doc_id for a in arts if len(cleaned[a.doc_id]) < MIN_CHARS]
    near_empty = [a.doc_id for a in arts if MIN_CHARS <= len(cleaned[a.doc_id]) < NEAR_EMPTY_CHARS]

    by_hash: dict[str, list[str]] = {}
    for a in arts:
        if a.doc_id not in empty:
            by_hash.setdefault(hashlib.sha1(cleaned[a.doc_id].encode()).hexdigest(), []).append(a.doc_id)
    exact = [ids for ids in by_hash.values() if len(ids) > 1]
    firsts = [ids[0] for ids in by_hash.values()]
    sh = {i: _shingles(cleaned[i]) for i in firsts if len(cleaned[i]) >= NEAR_EMPTY_CHARS}
    keys = list(sh)
    near = []
    for x, i in enumerate(keys):
        for j in keys[x + 1 :]:
            a, b = sh[i], sh[j]
            if min(len(a), len(b)) / max(len(a), len(b)) < NEAR_DUP_JACCARD:
                continue  # too different in size to reach the threshold
            jac = len(a & b) / len(a | b)
            if jac >= NEAR_DUP_JACCARD:
                near.append({"ids": [i, j], "jaccard": round(jac, 3)})

    invisible: dict[str, dict] = {}
    for ch in INVISIBLE:
        ids = [a.doc_id for a in arts if ch in a.raw or ch in a.title]
        if ids:
            invisible[_INVISIBLE_NAMES[ch]] = {
                "articles": len(ids),
                "count": sum(a.raw.count(ch) for a in arts),
                "ids": ids,
            }
    html = {}
    for a in arts:
        found = HTML_LEFTOVER_RE.findall(a.raw)
        if found:
            html[a.doc_id] = found[:3]
    like = [a.doc_id for a in arts if _LIKE_COUNT_RE.search(a.raw.replace("\u200b", ""))]
    glued = bullets = 0
    junk: dict[str, int] = {}
    for a in arts:
        if a.doc_id in empty:
            continue
        unsplit = clean_text(a.raw, like_count=path.suffix == ".json", restore_breaks=False)
        glued += glued_endings(unsplit)
        bullets += bullet_ats(unsplit)
        for kind, n in junk_counts(cleaned[a.doc_id]).items():
            junk[kind] = junk.get(kind, 0) + n
    mismatches = []
    for a in arts:
        if a.doc_id in empty:
            continue
        cats = categorize(a.label, clean_title(a.title), cleaned[a.doc_id])
        if cats.label_mismatch:
            mismatches.append(
                {
                    "id": a.doc_id,
                    "title": clean_title(a.title),
                    "label": a.label.strip(),
                    "detected": cats.category3,
                }
            )
    return {
        "path": str(path),
        "articles": len(arts),
        "empty": {"count": len(empty), "ids": empty, "action": "skipped when indexing"},
        "near_empty": {"count": len(near_empty), "ids": near_empty, "action": "kept (check them)"},
        "exact_duplicates": {"groups": len(exact), "ids": exact, "action": "first kept, others skipped"},
        "near_duplicates": {"pairs": len(near), "pairs_list": near, "action": "kept (review)"},
        "invisible_characters": {"kinds": invisible, "action": "removed by cleaning"},
        "html_leftovers": {"articles": len(html), "examples": html, "action": "removed by cleaning"},
        "trailing_like_count": {"articles": len(like), "action": "removed by cleaning (guide JSON)"},
        "glued_sentences": {
            "count": glued,
            "bullets": bullets,
            "action": "line break put back between a sentence ending and the next word, and for '@' bullets",
        },
        "page_furniture": {
            "sentences": junk,
            "action": "never used in answers (tables of contents, Ctrl+F hints, changelogs, link dumps)",
        },
        "label_mismatch": {
            "count": len(mismatches),
            "first_shifted_id": mismatches[0]["id"] if mismatches else None,
            "items": mismatches,
            "action": "class tag for filters taken from title/content; original label kept in metadata",
        },
    }
