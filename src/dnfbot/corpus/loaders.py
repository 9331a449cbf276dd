"""One way to read a corpus: `load_corpus(paths)`.

Supported sources (detected from the path):
- the guide-articles JSON (`title`, `category1`, `content` dicts keyed by the same ids, e.g. dnf_homepage_tip.json)
- JSONL, one `{"id", "title", "text", "metadata"?}` per line (metadata may carry category1/2/3)
- a folder of .txt/.md files (doc id = relative path, title = first heading/line)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot.corpus.categories import categorize
from dnfbot.corpus.clean import clean_text, clean_title
from dnfbot.corpus.document import Document
from dnfbot.errors import InputError
from dnfbot.io import iter_jsonl, read_json, read_text

MIN_CHARS = 20  # a cleaned body shorter than this is treated as empty ("클릭시 확대", a lone like count)
GUIDE_FIELDS = ("title", "category1", "content")


@dataclass
class LoadReport:
    sources: list[str] = field(default_factory=list)
    loaded: int = 0
    skipped_empty: list[str] = field(default_factory=list)
    skipped_duplicate: list[str] = field(default_factory=list)
    label_mismatch: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "sources": self.sources,
            "loaded": self.loaded,
            "skipped_empty": len(self.skipped_empty),
            "skipped_duplicate": len(self.skipped_duplicate),
            "label_mismatch": len(self.label_mismatch),
            "skipped_empty_ids": self.skipped_empty,
            "skipped_duplicate_ids": self.skipped_duplicate,
            "label_mismatch_ids": self.label_mismatch,
        }


def load_corpus(
    paths: list[str | Path] | str | Path, *, min_chars: int = MIN_CHARS
) -> tuple[list[Document], LoadReport]:
    """Load, clean and tag every source; skip (and count) empty and exactly duplicated articles."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise InputError("no corpus given: pass --corpus PATH")
    report = LoadReport()
    docs: list[Document] = []
    seen_ids: dict[str, str] = {}
    seen_text: dict[str, str] = {}
    for path in map(Path, paths):
        report.sources.append(str(path))
        for doc in _load_one(path):
            if doc.doc_id in seen_ids:
                raise InputError(f"{path}: document id '{doc.doc_id}' is also used in {seen_ids[doc.doc_id]}")
            seen_ids[doc.doc_id] = str(path)
            if len(doc.text) < min_chars:
                report.skipped_empty.append(doc.doc_id)
                continue
            digest = hashlib.sha1(doc.text.encode()).hexdigest()
            if digest in seen_text:
                report.skipped_duplicate.append(doc.doc_id)
                continue
            seen_text[digest] = doc.doc_id
            if doc.metadata.get("label_mismatch"):
                report.label_mismatch.append(doc.doc_id)
            docs.append(doc)
    if not docs:
        raise InputError(f"{', '.join(report.sources)}: corpus is empty (no article with text)")
    report.loaded = len(docs)
    return docs, report


def _load_one(path: Path) -> list[Document]:
    if not path.exists():
        raise InputError(f"{path}: corpus not found")
    if path.is_dir():
        return load_folder(path)
    if path.suffix.lower() == ".jsonl":
        return load_jsonl(path)
    if path.suffix.lower() == ".json":
        return load_guide_json(path)
    raise InputError(f"{path}: unknown corpus format (expected .json guide articles, .jsonl or a folder)")


def load_guide_json(path: Path) -> list[Document]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with {', '.join(GUIDE_FIELDS)}")
    for name in GUIDE_FIELDS:
        if name not in data:
            raise InputError(f"{path}: missing field '{name}'")
        if not isinstance(data[name], dict):
            raise InputError(f"{path}: field '{name}' must be an object keyed by article id")
    docs = []
    for key, raw in data["content"].items():
        if not isinstance(raw, str):
            raise InputError(f"{path}: content['{key}'] must be a string")
        title = data["title"].get(key)
        if not isinstance(title, str):
            raise InputError(f"{path}: missing field title['{key}']")
        label = data["category1"].get(key)
        if label is not None and not isinstance(label, str):
            raise InputError(f"{path}: category1['{key}'] must be a string, got {type(label).__name__}")
        label = label or ""
        title = clean_title(title)
        text = clean_text(raw, like_count=True)
        cats = categorize(label, title, text)
        meta = {"label": label.strip()}
        if cats.label_mismatch:
            meta["label_mismatch"] = True
        docs.append(
            Document(str(key), title, text, cats.category1, cats.category2, cats.category3, str(path), meta)
        )
    return docs


def load_jsonl(path: Path) -> list[Document]:
    docs = []
    for i, rec in enumerate(iter_jsonl(path)):
        where = f"{path}:{i + 1}"
        for name in ("id", "text"):
            if rec.get(name) is None:
                raise InputError(f"{where}: missing field '{name}'")
        if not isinstance(rec["text"], str):
            raise InputError(f"{where}: field 'text' must be a string")
        meta = rec.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InputError(f"{where}: field 'metadata' must be an object")
        for name in ("category1", "category2", "category3"):
            if meta.get(name) is not None and not isinstance(meta[name], str):
                raise InputError(f"{where}: field 'metadata.{name}' must be a string")
        title = clean_title(str(rec.get("title") or ""))
        text = clean_text(rec["text"])
        docs.append(
            Document(
                str(rec["id"]),
                title or str(rec["id"]),
                text,
                meta.get("category1"),
                meta.get("category2"),
                meta.get("category3"),
                str(path),
                meta,
            )
        )
    return docs


def load_folder(path: Path) -> list[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".md"})
    if not files:
        raise InputError(f"{path}: no .txt or .md files in folder")
    docs = []
    for f in files:
        raw = read_text(f)
        first = next((line.strip().lstrip("#").strip() for line in raw.splitlines() if line.strip()), f.stem)
        rel = f.relative_to(path).as_posix()
        docs.append(Document(rel, clean_title(first)[:200], clean_text(raw), source=str(f)))
    return docs
