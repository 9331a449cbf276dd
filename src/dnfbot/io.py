"""Small, safe file helpers shared by every stage: atomic writes and append-only JSONL.

Atomic: write to a temp file in the same directory, fsync, then os.replace — a crash leaves either the old
file or the new one, never half of one. JSONL output is appended record by record and flushed, and the
reader tolerates (and reports) a torn last line left by a killed writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_text(path: str | os.PathLike) -> str:
    """Read UTF-8 text (BOM tolerated) or raise a one-line InputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def read_json(path: str | os.PathLike) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Yield one dict per non-empty line. A malformed line is an InputError naming file and line.

    allow_torn_tail: skip a malformed *last* line (what a killed appender leaves behind)."""
    for _, obj in _numbered_jsonl(Path(path), allow_torn_tail):
        yield obj


def _numbered_jsonl(path: Path, allow_torn_tail: bool) -> Iterator[tuple[int, dict]]:
    lines = read_text(path).split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and i == last:
                return
            raise InputError(f"{path}:{i + 1}: malformed JSON line: {e.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        yield i + 1, obj


def read_jsonl(path: str | os.PathLike, **kw: Any) -> list[dict]:
    return list(iter_jsonl(path, **kw))


def iter_records(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of a dataset file: JSONL, or a JSON array (.json, the KoChatGPT files).

    `where` names the record in messages: 'file:LINE' for JSONL, 'file: item N' for a JSON array."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        for i, rec in _numbered_jsonl(path, allow_torn_tail):
            yield f"{path}:{i}", rec
        return
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of objects (or a .jsonl file)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise InputError(f"{path}: item {i}: expected a JSON object, got {type(rec).__name__}")
        yield f"{path}: item {i}", rec


def require_text(record: dict, name: str, where: str) -> str:
    """The record's non-empty string field `name`, stripped; else InputError naming the record and the field."""
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: missing or empty field '{name}'")
    return value.strip()


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write a whole JSONL file atomically; returns the record count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


class JsonlAppender:
    """Append-only JSONL writer: one flushed line per record, so a kill loses at most the line in flight.

    If the file ends in a torn line (no trailing newline), it is cut off before appending."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)
