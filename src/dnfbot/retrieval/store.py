"""The index directory: versioned, fingerprinted builds, switched atomically.

    index-dir/
      CURRENT               name of the live build (replaced with os.replace: readers never see a half index)
      build-<fingerprint>/  manifest.json, chunks.jsonl, sparse/ (bm25s), df.json, and dense/ when built

A build is written into a temporary folder, renamed into place when complete, and only then named in CURRENT;
older builds are removed afterwards. A crash at any point leaves the previous index usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.errors import IndexMissingError, InputError
from dnfbot.io import atomic_write_json, atomic_write_text, read_json

FORMAT_VERSION = 2
CURRENT = "CURRENT"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".md"}):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def describe_sources(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: corpus not found")
        out.append({"path": str(p.resolve()), "sha256": file_digest(p)})
    return out


def fingerprint(sources: list[dict], params: dict) -> str:
    payload = json.dumps(
        {"format": FORMAT_VERSION, "sources": [s["sha256"] for s in sources], "params": params},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Build:
    path: Path
    manifest: dict

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def current_build(index_dir: Path) -> Build:
    """The live build, or IndexMissingError with instructions."""
    index_dir = Path(index_dir)
    pointer = index_dir / CURRENT
    if not pointer.exists():
        raise IndexMissingError(
            f"no index in {index_dir}: build one with `dnfbot index build --corpus PATH` "
            "(the public guide corpus: see README 'Getting the corpus')"
        )
    path = index_dir / pointer.read_text(encoding="utf-8").strip()
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise IndexMissingError(f"{path}: index build is incomplete; rebuild with `dnfbot index build`")
    manifest = read_json(manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMissingError(
            f"{path}: index format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild with `dnfbot index build`"
        )
    return Build(path, manifest)


def begin_build(index_dir: Path) -> Path:
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_dir / f".tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    return tmp


def commit_build(index_dir: Path, tmp: Path, manifest: dict) -> Build:
    """Make a finished temporary build live."""
    atomic_write_json(tmp / "manifest.json", manifest)
    name = f"build-{manifest['fingerprint']}"
    final = index_dir / name
    if final.exists():  # same content rebuilt (e.g. --force): replace it out of the reader's way
        stale = index_dir / f".old-{time.time_ns()}"
        os.replace(final, stale)
    os.replace(tmp, final)
    atomic_write_text(index_dir / CURRENT, name + "\n")
    _remove_old(index_dir, keep=name)
    return Build(final, manifest)


def abort_build(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_old(index_dir: Path, keep: str) -> None:
    for p in index_dir.iterdir():
        if p.is_dir() and p.name != keep and (p.name.startswith(("build-", ".old-", ".tmp-"))):
            if p.name.startswith(".tmp-") and _is_recent(p):
                continue  # another build may be writing it right now
            shutil.rmtree(p, ignore_errors=True)


def _is_recent(p: Path, seconds: float = 3600) -> bool:
    return time.time() - p.stat().st_mtime < seconds
