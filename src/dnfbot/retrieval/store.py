"""The index directory: versioned, fingerprinted builds, switched atomically, checked when read.

    index-dir/
      CURRENT                     name of the live build (replaced with os.replace: readers never see half)
      .build.lock                 held (flock) by the one process building: concurrent builders wait in turn
      build-<fingerprint>-<n>/    manifest.json (written last), .pin, chunks.jsonl, spans.jsonl (+ offsets),
                                  sparse/ sparse_bigram/ (bm25s), and dense/ when built

Invariants:
- A build is written into `.tmp-*`, its manifest (listing every file with its size and sha256) is written
  last, the folder is renamed to a name never used before, and only then named in CURRENT. CURRENT is the
  single commit point: a crash (or a full disk) at any moment leaves the previous build live and intact.
  Same-content rebuilds (`--force`) get a new name too, so CURRENT never names a folder that is moving.
- A reader resolves CURRENT, then takes a shared flock on the build's `.pin` for as long as it uses the build
  (`open_current`). Old builds are removed only by a builder that gets the exclusive lock on their `.pin`:
  a build a reader holds is left for a later clean-up, never removed under it.
- `current_build` refuses anything it cannot trust — CURRENT that names no build, a manifest that is not one,
  a file missing or of another size than the manifest says — with IndexDamagedError, which carries the
  corpus paths the build came from when they are known, so that callers can rebuild without asking.
  `verify_build(..., deep=True)` also compares checksums (`dnfbot index status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dnfbot.errors import IndexDamagedError, IndexMissingError, InputError, OutputError
from dnfbot.io import atomic_write_json, atomic_write_text, os_error_reason, read_json

try:
    import fcntl
except ImportError:  # Windows: no flock; builds are still atomic, but neither serialised nor pinned
    fcntl = None

FORMAT_VERSION = 3  # 3: manifest lists files (size, sha256); unique build names; .pin
CURRENT = "CURRENT"
LOCK_FILE = ".build.lock"
PIN_FILE = ".pin"
MANIFEST = "manifest.json"
_NAME = re.compile(r"build-[0-9a-f]{16}(-[0-9a-f]{1,20})?")
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "fingerprint": str,
    "sources": list,
    "params": dict,
    "documents": int,
    "chunks": int,
    "load_report": dict,
    "files": dict,
    "built_at": str,
}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".md"}):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    else:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def describe_sources(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: corpus not found")
        try:
            out.append({"path": str(p.resolve()), "sha256": file_digest(p)})
        except OSError as e:
            raise InputError(f"{p}: cannot read the corpus: {os_error_reason(e, p)}") from None
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
    pin: IO | None = field(default=None, repr=False, compare=False)  # held open: the build is in use

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def release(self) -> None:
        """Let builders remove this build (when it is no longer CURRENT)."""
        if self.pin is not None:
            self.pin.close()
            self.pin = None


# --- reading --------------------------------------------------------------------------------------------------
def rebuild_hint(index_dir: Path, sources: list[str] | None = None) -> str:
    corpus = " ".join(f"--corpus {s}" for s in sources) if sources else "--corpus PATH"
    return f"`dnfbot index build --index-dir {index_dir} {corpus} --force`"


def _damaged(
    index_dir: Path, reason: str, sources: list[str] | None = None, build_name: str | None = None
) -> IndexDamagedError:
    return IndexDamagedError(
        f"index in {index_dir} is damaged ({reason}): rebuild it with {rebuild_hint(index_dir, sources)}",
        sources,
        reason,
        build_name,
    )


def damaged(build: Build, reason: str) -> IndexDamagedError:
    """The error for a build whose files turned out unreadable (when loading them)."""
    return _damaged(build.path.parent, reason, _sources_of(build.manifest), build.path.name)


def current_name(index_dir: Path) -> str:
    """The build CURRENT names (IndexMissingError if there is none, IndexDamagedError if it is not a name)."""
    pointer = Path(index_dir) / CURRENT
    try:
        raw = pointer.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise IndexMissingError(
            f"no index in {index_dir}: build one with `dnfbot index build --corpus PATH` "
            "(the public guide corpus: see README 'Getting the corpus')"
        ) from None
    except OSError as e:
        raise IndexMissingError(f"{pointer}: cannot read: {os_error_reason(e, pointer)}") from None
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        name = ""
    if not _NAME.fullmatch(name):
        raise _damaged(index_dir, f"{CURRENT} does not name a build", find_sources(index_dir))
    return name


def current_build(index_dir: Path) -> Build:
    """The live build, checked (manifest complete, every file there at its size), or IndexMissingError /
    IndexDamagedError with the command that fixes it."""
    index_dir = Path(index_dir)
    return load_build(index_dir / current_name(index_dir))


def load_build(path: Path, *, deep: bool = False) -> Build:
    """A build folder with its manifest, checked like current_build (and checksums when `deep`)."""
    index_dir = path.parent
    manifest, problem = _read_manifest(path)
    if problem:
        raise _damaged(index_dir, problem, _sources_of(manifest) or find_sources(index_dir, skip=path.name))
    build = Build(path, manifest)
    problem = verify_build(build, deep=deep)
    if problem:
        raise _damaged(index_dir, problem, _sources_of(manifest))
    return build


def _read_manifest(path: Path) -> tuple[Any, str | None]:
    """(manifest, None) or (whatever could be read, what is wrong with it)."""
    file = path / MANIFEST
    if not path.is_dir():
        return None, f"{path.name} is missing"
    if not file.exists():
        return None, f"{path.name} has no {MANIFEST}: the build never finished"
    try:
        manifest = read_json(file)
    except InputError as e:
        return None, str(e)
    if not isinstance(manifest, dict):
        return None, f"{file} is not a manifest"
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        return manifest, f"{path.name} has index format {version}, this dnfbot reads {FORMAT_VERSION}"
    for name, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            return manifest, f"{file} has no valid '{name}'"
    for s in manifest["sources"]:
        if not (isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("sha256"), str)):
            return manifest, f"{file} has no valid 'sources'"
    return manifest, None


def _sources_of(manifest: Any) -> list[str] | None:
    """The corpus paths a (possibly damaged) manifest names, if it names any."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), list):
        return None
    paths = [s.get("path") for s in manifest["sources"] if isinstance(s, dict)]
    return [p for p in paths if isinstance(p, str)] or None


def find_sources(index_dir: Path, skip: str | None = None) -> list[str] | None:
    """The corpus of the newest build in index_dir whose manifest still names one (to rebuild a damaged index).
    `.old-*` counts too: where dnfbot before format 3 was killed in a `--force` rebuild, the live build is there."""
    try:
        found = [*Path(index_dir).glob("build-*"), *Path(index_dir).glob(".old-*")]
        builds = sorted((p for p in found if p.name != skip), key=_mtime, reverse=True)
    except OSError:
        return None
    for p in builds:
        try:
            sources = _sources_of(read_json(p / MANIFEST))
        except InputError:
            continue
        if sources:
            return sources
    return None


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def verify_build(build: Build, *, deep: bool = False) -> str | None:
    """What is wrong with a build's files (None: nothing). Sizes always; sha256 too when `deep`."""
    for rel, info in sorted(build.manifest["files"].items()):
        p = build.path / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if not isinstance(info, dict) or size != info.get("size"):
            return f"{rel} has {size} bytes, the build wrote {info.get('size') if isinstance(info, dict) else '?'}"
        if deep and file_digest(p) != info.get("sha256"):
            return f"{rel} was changed after the build (checksum differs)"
    return None


def open_current(index_dir: Path, attempts: int = 5) -> Build:
    """current_build, pinned: until `Build.release()` (or the process ends) no builder removes it."""
    index_dir = Path(index_dir)
    for attempt in range(attempts):
        name = current_name(index_dir)
        pin = _pin(index_dir / name)
        if pin is False:  # the build went away between reading CURRENT and pinning it: CURRENT moved on
            time.sleep(0.05 * (attempt + 1))
            continue
        try:
            build = load_build(index_dir / name)
        except BaseException:
            if pin:
                pin.close()
            raise
        build.pin = pin or None
        return build
    return current_build(index_dir)  # still moving after several tries: the unpinned answer (or its error)


def _pin(path: Path) -> IO | None | bool:
    """A shared lock on the build's .pin: an open file, None where pins are not possible (no flock, an older
    build without .pin, a file we may not open), False if the build is gone (or being removed)."""
    if fcntl is None:
        return None
    pin_path = path / PIN_FILE
    try:
        f = open(pin_path, "rb")  # noqa: SIM115 - the caller keeps it open while it uses the build
    except FileNotFoundError:
        return None if path.is_dir() else False
    except OSError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # waits only while a builder is removing this very build
        if os.fstat(f.fileno()).st_ino != pin_path.stat().st_ino:
            raise FileNotFoundError(pin_path)
    except FileNotFoundError:
        f.close()
        return False
    except OSError:
        f.close()
        return None
    return f


# --- writing --------------------------------------------------------------------------------------------------
class IndexWriteError(OutputError):
    """An index build could not be written; the message says what is live instead."""


def write_error(index_dir: Path, e: OSError | OutputError, path: Path | None = None) -> IndexWriteError:
    """One line: what could not be written, and what is live now."""
    if isinstance(e, IndexWriteError):
        return e
    try:
        live = f"the previous index ({current_name(index_dir)}) is still live"
    except IndexMissingError:
        live = "no index was live before"
    if isinstance(e, OutputError):
        detail = str(e)
    else:
        where = path if path is not None else Path(e.filename) if e.filename else index_dir
        detail = f"{where}: {os_error_reason(e, where)}"
    return IndexWriteError(f"cannot write the index in {index_dir} ({detail}); {live}")


@contextlib.contextmanager
def build_lock(index_dir: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Serialise builders of one index dir (flock: released by the OS when a builder dies)."""
    index_dir = Path(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        f = open(index_dir / LOCK_FILE, "a+b")  # noqa: SIM115 - closed below
    except OSError as e:
        raise write_error(index_dir, e, index_dir / LOCK_FILE) from None
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def begin_build(index_dir: Path) -> Path:
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = index_dir / f".tmp-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
    except OSError as e:
        raise write_error(index_dir, e) from None
    return tmp


def commit_build(index_dir: Path, tmp: Path, manifest: dict) -> Build:
    """Make a finished temporary build live: list its files, write the manifest, rename it to a new name,
    switch CURRENT (the commit point), then remove builds nobody holds. Call with build_lock held."""
    try:
        (tmp / PIN_FILE).touch()
        files = {}
        for p in sorted(tmp.rglob("*")):
            rel = p.relative_to(tmp).as_posix()
            if p.is_file() and rel not in (MANIFEST, PIN_FILE):
                files[rel] = {"size": p.stat().st_size, "sha256": file_digest(p)}
        manifest = dict(manifest, format_version=FORMAT_VERSION, files=files)
        atomic_write_json(tmp / MANIFEST, manifest)  # last: a build without one never finished
        name = f"build-{manifest['fingerprint']}-{time.time_ns():x}"
        final = index_dir / name
        os.replace(tmp, final)
        atomic_write_text(index_dir / CURRENT, name + "\n")
        _fsync_dir(index_dir)
    except (OSError, OutputError) as e:
        raise write_error(index_dir, e) from None
    collect_garbage(index_dir, keep=name)
    return Build(final, manifest)


def abort_build(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def collect_garbage(index_dir: Path, keep: str) -> list[str]:
    """Remove builds other than `keep` that no reader holds, and leftovers of crashed builds. Returns the
    names of builds left because a reader holds them. Call with build_lock held (builders are serialised,
    so a `.tmp-*` that is not ours is a crashed build's)."""
    held = []
    try:
        entries = list(Path(index_dir).iterdir())
    except OSError:
        return held
    for p in entries:
        if p.name == keep or not p.is_dir():
            continue
        if p.name.startswith("build-"):
            if not _remove_unheld(p):
                held.append(p.name)
        elif p.name.startswith((".old-", ".del-")) or (
            p.name.startswith(".tmp-") and (fcntl is not None or not _is_recent(p))
        ):
            shutil.rmtree(p, ignore_errors=True)
    return held


def _remove_unheld(path: Path) -> bool:
    """Remove a build unless a reader pins it; True if it is gone."""
    if fcntl is None:
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        f = open(path / PIN_FILE, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # a build from before pins, or half-removed: nobody can hold it
        f = None
    except OSError:
        return False
    try:
        if f is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a reader holds it: a later build removes it
        trash = path.with_name(f".del-{path.name}-{time.time_ns():x}")
        try:
            os.replace(path, trash)  # out of sight at once; then removed at leisure
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True
    finally:
        if f is not None:
            f.close()


def _is_recent(p: Path, seconds: float = 3600) -> bool:
    return time.time() - _mtime(p) < seconds
