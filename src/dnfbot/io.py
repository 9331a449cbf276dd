"""Small, safe file helpers shared by every stage: atomic writes and append-only JSONL.

Atomic: write to a temp file in the same directory, fsync, then os.replace — a crash leaves either the old
file or the new one, never half of one. The new file gets the mode the old one had, or 0666 less the umask
(never mkstemp's 0600: another user may serve what we write). JSONL output is appended record by record and
flushed, and the reader tolerates (and reports) a torn last line left by a killed writer — even one cut in the
middle of a character (each line is decoded on its own, so a torn tail never makes the whole file "not UTF-8").

Every failure is one line naming the file (and line): InputError when reading, OutputError when writing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError, OutputError

# A \uD800–\uDFFF escape: json accepts a lone one, and the string then fails wherever it is encoded later.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def os_error_reason(e: OSError, path: str | os.PathLike) -> str:
    """What went wrong with `path`, in a few words ("no space left on device", "/x is a file, not a folder")."""
    path = Path(path)
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    if e.errno == errno.EISDIR or (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
        return "is a folder, expected a file path"
    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large (size limit reached)",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
    }
    return reasons.get(e.errno, e.strerror or str(e))


def output_error(path: str | os.PathLike, e: OSError, what: str = "cannot write") -> OutputError:
    return OutputError(f"{path}: {what}: {os_error_reason(e, path)}")


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The mode a rewritten file keeps, or a new file's 0666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` all at once; OutputError (and `path` untouched) if it cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # POSIX; on Windows the file keeps its default permissions
                os.fchmod(f.fileno(), new_file_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, or a one-line InputError naming it (missing, a folder, unreadable)."""
    path = Path(path)
    _require_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {os_error_reason(e, path)}") from None


def read_text(path: str | os.PathLike) -> str:
    """Read UTF-8 text (BOM tolerated) or raise a one-line InputError naming the file."""
    try:
        return read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start}); save it as UTF-8") from None


def _parse(text: str, where: str, raw: bytes) -> Any:
    """json.loads with one-line errors: malformed, nested too deeply, or a lone surrogate escape.
    `raw` is the text's UTF-8 source, searched for surrogate escapes."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then pay for a check of every string
        _check_encodable(obj, where)
    return obj


def _check_encodable(obj: Any, where: str) -> None:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end].encode("unicode_escape").decode()
        raise InputError(f"{where}: invalid Unicode: lone surrogate escape {bad}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start}); save it as UTF-8") from None
    return _parse(text, str(path), data)


def iter_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Yield one dict per non-empty line. A bad line (not UTF-8, malformed, nested too deeply, a lone surrogate,
    not an object) is an InputError naming file and line.

    allow_torn_tail: skip a bad *last* line (what a killed appender or a full disk leaves behind). Lines are
    read and decoded one at a time: a line cut mid-character is just a bad line, and the file is never held
    in memory whole."""
    for _, obj in _numbered_jsonl(Path(path), allow_torn_tail):
        yield obj


def _numbered_jsonl(path: Path, allow_torn_tail: bool) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    _require_file(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below, also when the consumer stops early
    except OSError as e:
        raise InputError(f"{path}: cannot read: {os_error_reason(e, path)}") from None
    pending: InputError | None = None  # a bad line: fatal unless no other line follows it
    with f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            if pending is not None:
                raise pending
            try:
                obj = parse_jsonl_line(raw, f"{path}:{i}")
            except InputError as e:
                if not allow_torn_tail:
                    raise
                pending = e
                continue
            yield i, obj


def parse_jsonl_line(raw: bytes, where: str) -> dict:
    """One JSONL record from its bytes, or an InputError naming `where` (file:line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not valid UTF-8 (byte {e.start} of the line)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: malformed JSON line: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        _check_encodable(obj, where)
    return obj


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

    If the file ends in a torn line (no trailing newline, possibly cut mid-character), it is cut off before
    appending. A write that fails (disk full) is an OutputError; the lines written before it stay, and the
    partial line it may leave is cut off by the next appender (resume)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder, expected a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _repair_torn_tail(self.path)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise output_error(self.path, e) from None

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            self._f.write(line)
            self._f.flush()
        except OSError as e:
            raise output_error(self.path, e) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:  # the buffered tail could not be flushed: it is a torn line, repaired on resume
            raise output_error(self.path, e) from None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_torn_tail(path: Path) -> None:
    """A last line without its newline: completed when it is a whole record (it was read as one, so it must
    not be lost), cut off otherwise (a killed or disk-full writer, maybe mid-character). Reads only the end."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos, block, tail = size, 1 << 16, b""
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            tail = f.read(pos - start) + tail
            nl = tail.rfind(b"\n")
            if nl >= 0:
                start, tail = start + nl + 1, tail[nl + 1 :]
                break
            pos = start
        else:
            start = 0
        try:
            parse_jsonl_line(tail, str(path))
        except InputError:
            f.truncate(start)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
