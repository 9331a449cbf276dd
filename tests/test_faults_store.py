"""Faults in the index store, the IO helpers and settings (issue 14): real files, real processes.

Each test damages or constrains something the way a user, a full disk or a concurrent process would, then
checks one of two outcomes: a one-line error (stable exit code 2, no traceback) that names what is wrong and
what to run, or an automatic recovery — and in both cases that nothing already written is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dnfbot.config import Settings
from dnfbot.errors import IndexDamagedError, InputError, OutputError
from dnfbot.io import JsonlAppender, atomic_write_text, iter_jsonl, read_json
from dnfbot.retrieval import store
from dnfbot.retrieval.index import build_index, open_index

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(
    *args: str, env: dict | None = None, preexec=None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """`dnfbot ARGS` in a real process (this checkout's source first)."""
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dnfbot", *args],
        capture_output=True,
        text=True,
        env=e,
        preexec_fn=preexec,
        timeout=timeout,
    )


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a clean refusal: exit 2, nothing on stdout, one line on stderr containing every needle."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def built(tmp_path):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    index_dir = tmp_path / "index"
    build_index([corpus], index_dir, Settings())
    return corpus, index_dir


def live(index_dir: Path) -> store.Build:
    return store.current_build(index_dir)


def search(index_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("search", "무의 장막 신수", "--index-dir", str(index_dir), "--json", *extra)


def assert_searchable(index_dir: Path) -> None:
    """The live index loads and answers (in this process: Kiwi is loaded once for the whole suite)."""
    idx, build = open_index(index_dir, Settings(), refresh=False)
    try:
        assert idx.search("무의 장막 신수", k=1)[0].chunk.doc_id == "0"
        assert all(idx.chunk_spans(i) is not None for i in range(idx.n))
    finally:
        build.release()


def snapshot(build: store.Build) -> dict[str, bytes]:
    return {
        p.relative_to(build.path).as_posix(): p.read_bytes() for p in build.path.rglob("*") if p.is_file()
    }


# --- a damaged build: refused with the command to rebuild, or rebuilt from its corpus ----------------------------
def test_manifest_that_is_a_list_is_refused_with_the_rebuild_command(built):
    _, index_dir = built
    (live(index_dir).path / "manifest.json").write_text("[]", encoding="utf-8")
    line = one_line_error(search(index_dir), str(index_dir), "damaged", "dnfbot index build")
    assert "is not a manifest" in line


def test_manifest_without_sources_is_refused_and_without_params_is_rebuilt(built):
    corpus, index_dir = built
    b = live(index_dir)
    m = read_json(b.path / "manifest.json")
    (b.path / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "sources"}))
    one_line_error(search(index_dir), "damaged", "'sources'", "dnfbot index build")

    build_index([corpus], index_dir, Settings(), force=True)
    b = live(index_dir)
    m = read_json(b.path / "manifest.json")
    (b.path / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "params"}))
    r = search(index_dir)  # its corpus is known and there: rebuilt, then answered
    assert (
        r.returncode == 0
        and "damaged" in r.stderr
        and "rebuilding" in r.stderr
        and "Traceback" not in r.stderr
    )
    assert json.loads(r.stdout)["results"] and live(index_dir).path != b.path


def test_current_with_binary_bytes_is_rebuilt_from_the_builds_corpus(built):
    _, index_dir = built
    (index_dir / "CURRENT").write_bytes(b"\x00\xff\xfe garbage \x80")
    with pytest.raises(IndexDamagedError, match="CURRENT does not name a build"):
        live(index_dir)
    assert_searchable(index_dir)
    assert live(index_dir).manifest["chunks"] > 0


@pytest.mark.parametrize(
    "damage",
    ["truncate-npy", "delete-sparse", "empty-spans", "truncate-chunks", "garbage-npy-same-size"],
)
def test_damaged_files_are_detected_and_rebuilt_when_the_corpus_is_there(built, damage):
    _, index_dir = built
    b = live(index_dir)
    npy = b.path / "sparse" / "data.csc.index.npy"
    if damage == "truncate-npy":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "delete-sparse":
        shutil.rmtree(b.path / "sparse")
    elif damage == "empty-spans":
        (b.path / "spans.jsonl").write_bytes(b"")
    elif damage == "truncate-chunks":
        p = b.path / "chunks.jsonl"
        p.write_bytes(p.read_bytes()[:-50])
    else:  # same size, other bytes: caught when loading (and by the checksums of `index status`)
        npy.write_bytes(b"\x00" * npy.stat().st_size)
        r = cli("index", "status", "--index-dir", str(index_dir), "--json")
        assert r.returncode == 0 and "checksum differs" in json.loads(r.stdout)["checksums"]
    if damage != "garbage-npy-same-size":
        with pytest.raises(IndexDamagedError, match="dnfbot index build"):
            live(index_dir)
    repaired: list[str] = []
    idx, after = open_index(index_dir, Settings(), on_repair=repaired.append)
    assert len(repaired) == 1 and idx.search("무의 장막 신수", k=1)[0].chunk.doc_id == "0"
    assert store.verify_build(after, deep=True) is None and not b.path.exists()
    after.release()


def test_a_damaged_index_is_rebuilt_by_the_cli_in_one_warning_line(built):
    _, index_dir = built
    (live(index_dir).path / "spans.jsonl").write_bytes(b"")
    r = search(index_dir)
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["doc_id"] == "0"
    assert r.stderr.strip().splitlines() == [
        "index is damaged (spans.jsonl has 0 bytes, the build wrote "
        f"{live(index_dir).manifest['files']['spans.jsonl']['size']}): rebuilding it…"
    ]


def test_damaged_index_whose_corpus_is_gone_is_refused_in_one_line(built):
    corpus, index_dir = built
    npy = live(index_dir).path / "sparse_bigram" / "indptr.csc.index.npy"
    npy.write_bytes(npy.read_bytes()[:10])
    corpus.unlink()
    for args in (["search", "장막"], ["ask", "장막 신수 뭐가 좋아?"], ["index", "status"]):
        one_line_error(cli(*args, "--index-dir", str(index_dir)), "damaged", f"--corpus {corpus}")


def test_an_index_left_broken_by_an_older_dnfbot_is_rebuilt(built):
    """Format 2, killed between the two renames of a same-content --force rebuild: CURRENT names a build that
    is gone, and the build it meant sits in .old-*."""
    _, index_dir = built
    b = live(index_dir)
    m = read_json(b.path / "manifest.json")
    m["format_version"] = 2
    del m["files"]
    (b.path / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    old = index_dir / ".old-1733130000000000000"
    b.path.rename(old)
    (index_dir / "CURRENT").write_text("build-0123456789abcdef\n", encoding="utf-8")
    repaired: list[str] = []
    idx, build = open_index(index_dir, Settings(), on_repair=repaired.append)
    assert repaired and "missing" in repaired[0]
    assert idx.search("무의 장막 신수", k=1)[0].chunk.doc_id == "0" and not old.exists()
    build.release()


def test_build_over_a_damaged_index_rebuilds_instead_of_saying_up_to_date(built):
    corpus, index_dir = built
    (live(index_dir).path / "spans_offsets.npy").unlink()
    r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["rebuilt"] is True
    assert store.verify_build(live(index_dir), deep=True) is None


# --- concurrency: builders take turns; readers keep the build they opened ----------------------------------------
def test_two_concurrent_first_builds_both_succeed(tmp_path):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    index_dir = tmp_path / "index"
    e = dict(os.environ, PYTHONPATH=SRC)
    cmd = [
        sys.executable,
        "-m",
        "dnfbot",
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--index-dir",
        str(index_dir),
    ]
    procs = [
        subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    rebuilt = sorted(json.loads(out)["rebuilt"] for out, _ in results)
    assert rebuilt in (
        [False, True],
        [True, True],
    )  # the second waits, then finds the first's build (or rebuilds)
    assert [p.name for p in index_dir.glob("build-*")] == [live(index_dir).path.name]
    assert_searchable(index_dir)


def test_a_reader_keeps_its_build_while_another_process_rebuilds(built):
    corpus, index_dir = built
    settings = Settings()
    idx, build = open_index(index_dir, settings, refresh=False)
    before = [idx.chunk_spans(i) for i in range(idx.n)]
    r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--force")
    assert r.returncode == 0, r.stderr  # same content, --force: a new build; the old one is the reader's
    assert live(index_dir).path != build.path and build.path.exists()  # held: not removed
    assert [idx.chunk_spans(i) for i in range(idx.n)] == before
    assert idx.search("무의 장막 신수", k=1)[0].chunk.doc_id == "0"
    build.release()
    del idx
    r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--force")
    assert r.returncode == 0 and not build.path.exists()  # released: the next build cleans it up
    assert len(list(index_dir.glob("build-*"))) == 1


def test_readers_never_see_a_build_being_removed(built):
    corpus, index_dir = built
    settings = Settings()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                idx, b = open_index(index_dir, settings, refresh=False)
                assert idx.search("무의 장막 신수", k=1)
                assert all(idx.chunk_spans(i) is not None for i in range(idx.n))
                b.release()
            except BaseException as e:  # noqa: BLE001 - collected, asserted below
                errors.append(e)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(2):
            r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--force")
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors


_KILL_AT_REPLACE = """
import os, sys
from pathlib import Path
from dnfbot.config import Settings
from dnfbot.retrieval import index, store
real, n, k = os.replace, [0], int(sys.argv[3])
def replace(a, b):
    real(a, b)
    n[0] += 1
    if n[0] == k:
        os._exit(137)  # killed right after the k-th rename/replace of the commit
store.os.replace = replace
index.build_index([sys.argv[1]], Path(sys.argv[2]), Settings(), force=True)
"""


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4])
def test_a_kill_at_any_rename_of_a_same_content_force_rebuild_leaves_a_live_index(built, kill_after):
    corpus, index_dir = built
    before = live(index_dir)
    r = subprocess.run(
        [sys.executable, "-c", _KILL_AT_REPLACE, str(corpus), str(index_dir), str(kill_after)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode in (0, 137), r.stderr
    after = live(index_dir)  # CURRENT names an intact build: the old one or the new one
    assert after.fingerprint == before.fingerprint and store.verify_build(after, deep=True) is None
    assert_searchable(index_dir)


# --- write failures leave the previous index live and say so ---------------------------------------------------
def _small_file_limit():
    """Files may grow to 1 KB only, and SIGXFSZ is ignored (inherited across exec): writes fail with EFBIG,
    as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_disk_full_during_a_build_keeps_the_previous_index(built):
    corpus, index_dir = built
    before = live(index_dir)
    files = snapshot(before)
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수"), encoding="utf-8")
    r = cli(
        "index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), preexec=_small_file_limit
    )
    one_line_error(r, "cannot write the index", f"previous index ({before.path.name}) is still live")
    assert live(index_dir).path == before.path and snapshot(before) == files
    assert not list(index_dir.glob(".tmp-*"))
    # the corpus changed, so a reader tries to rebuild first: that fails the same way, and it answers from
    # the previous index, saying so in one line
    r = cli("search", "무의 장막 신수", "--index-dir", str(index_dir), "--json", preexec=_small_file_limit)
    assert r.returncode == 0 and "Traceback" not in r.stderr and json.loads(r.stdout)["results"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "still live" in lines[1]  # "rebuilding…", then the warning
    assert live(index_dir).path == before.path


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A folder nobody may write: chmod for a normal user; root ignores modes, so chattr +i (immutable)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode
    ):
        pytest.skip("running as root without chattr: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_index_dir_is_one_line_and_the_index_still_serves(built):
    corpus, index_dir = built
    before = live(index_dir)
    with read_only_dir(index_dir):
        r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--force")
        one_line_error(r, str(index_dir), "still live")
        assert_searchable(index_dir)  # readers need no write access
        corpus.write_text(
            corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수"), encoding="utf-8"
        )
        r = search(index_dir)  # stale, and cannot be rebuilt here: answered from the previous build
        assert r.returncode == 0 and "still live" in r.stderr and json.loads(r.stdout)["results"]
    assert live(index_dir).path == before.path


def test_dnfbot_home_that_is_a_file(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a folder")
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    env = {"DNFBOT_HOME": str(home)}
    one_line_error(cli("index", "build", "--corpus", str(corpus), env=env), f"{home} is a file, not a folder")
    one_line_error(cli("search", "장막", env=env), "no index in")
    assert home.read_text() == "not a folder"


def test_out_that_is_a_folder_or_under_a_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("kept")
    one_line_error(
        cli("corpus", "export", "--corpus", str(MINI), "--out", str(folder)), str(folder), "folder"
    )
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    one_line_error(
        cli("corpus", "export", "--corpus", str(MINI), "--out", str(blocker / "x.jsonl")),
        f"{blocker} is a file, not a folder",
    )
    r = cli("synth", "qa", "--corpus", str(MINI), "--backend", "extractive", "--out", str(folder))
    one_line_error(r, str(folder))
    assert (folder / "keep.txt").read_text() == "kept" and blocker.read_text() == "kept"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_current_and_manifest_are_readable_by_others_as_the_umask_allows(tmp_path, umask):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    index_dir = tmp_path / "index"
    r = cli(
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--index-dir",
        str(index_dir),
        preexec=lambda: os.umask(umask),
    )
    assert r.returncode == 0, r.stderr
    want = 0o666 & ~umask
    b = live(index_dir)
    for p in (index_dir / "CURRENT", b.path / "manifest.json", b.path / "chunks.jsonl"):
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


# --- settings validated where read, before anything goes live --------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, needles",
    [
        ("retrieval: {bm25_k1: .nan}\n", ["retrieval.bm25_k1", "finite"]),
        ("retrieval: {bm25_b: .inf}\n", ["retrieval.bm25_b"]),
        ("chunk: {size: 1000, overlap: 999}\n", ["chunk.overlap (999)", "half of chunk.size (1000)"]),
        ("chunk: {size: 500, overlap: 500}\n", ["chunk.overlap"]),
    ],
)
def test_bad_numbers_in_a_config_are_refused_before_any_build(tmp_path, yaml_text, needles):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml_text, encoding="utf-8")
    index_dir = tmp_path / "index"
    r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--config", str(cfg))
    one_line_error(r, str(cfg), *needles)
    assert not (index_dir / "CURRENT").exists()


def test_bad_chunk_settings_on_the_auto_rebuild_path_of_ask(built, tmp_path):
    _, index_dir = built
    cfg = tmp_path / "config.yaml"
    cfg.write_text("chunk: {size: 300, overlap: 300}\n", encoding="utf-8")
    before = live(index_dir)
    one_line_error(
        cli("ask", "장막 신수?", "--index-dir", str(index_dir), "--config", str(cfg)), "chunk.overlap"
    )
    assert live(index_dir).path == before.path


def test_nan_from_code_never_becomes_current(tmp_path):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    s = Settings()
    s.retrieval = s.retrieval.model_copy(update={"bm25_k1": float("nan")})  # model_copy skips validation
    with pytest.raises(InputError, match="bm25.k1"):
        build_index([corpus], tmp_path / "index", s)
    assert not (tmp_path / "index" / "CURRENT").exists()


def test_huge_overlap_chunking_finishes_in_linear_time():
    from dnfbot.corpus.chunking import split_text

    text = "무의 장막 공략입니다. 신수는 로그가 좋습니다. " * 4000  # 104k characters
    spans = split_text(text, size=1000, overlap=999)
    assert len(spans) <= 4 * len(text) / 500 + 2 and spans[-1][1] == len(text.rstrip())


# --- IO: torn tails, odd Unicode, odd files --------------------------------------------------------------------
def _raid_corpus(path: Path) -> Path:
    """Passages long enough for the offline synthesiser (it needs 5 usable sentences)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, name in enumerate(["안톤", "루크", "바칼", "이시스"]):
            text = (
                f"{name} 레이드는 매주 목요일에 초기화됩니다. 입장하려면 명성 조건을 먼저 확인해야 합니다. "
                f"파티는 네 명씩 세 파티로 구성됩니다. 각 파티는 서로 다른 공격대 경로를 맡게 됩니다. "
                f"{name}의 패턴은 단계마다 달라지므로 미리 익혀 두는 것이 좋습니다. "
                "클리어 보상은 계정마다 한 번 받을 수 있습니다."
            )
            f.write(
                json.dumps({"id": str(i), "title": f"{name} 레이드 공략", "text": text}, ensure_ascii=False)
            )
            f.write("\n")
    return path


def test_a_line_cut_mid_character_is_repaired_on_resume_and_nothing_is_lost(tmp_path):
    out = tmp_path / "qa.jsonl"
    corpus = _raid_corpus(tmp_path / "raids.jsonl")
    args = ["synth", "qa", "--corpus", str(corpus), "--backend", "extractive", "--out", str(out)]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    records = out.read_bytes().splitlines(keepends=True)
    assert len(records) >= 2
    last = records[-1]
    lead = next(j for j, b in enumerate(last) if b >= 0xE0)  # the first byte of a 3-byte (Hangul) character
    torn = b"".join(records[:-1]) + last[: lead + 2]  # cut inside that character, as a full disk does
    out.write_bytes(torn)
    with pytest.raises(InputError, match=r"qa.jsonl:\d+: not valid UTF-8"):
        list(iter_jsonl(out))
    assert len(list(iter_jsonl(out, allow_torn_tail=True))) == len(records) - 1
    r = cli(*args)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    again = out.read_bytes().splitlines(keepends=True)
    assert again[: len(records) - 1] == records[:-1]  # what was written before is kept, byte for byte
    ids = [json.loads(line)["id"] for line in again]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in records) and len(set(ids)) == len(ids)


def test_a_complete_last_record_without_newline_is_kept_by_the_appender(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_bytes(b'{"id": 1}\n{"id": 2, "text": "\xec\x9e\xa5\xeb\xa7\x89"}')  # complete, newline lost
    assert [r["id"] for r in iter_jsonl(p, allow_torn_tail=True)] == [1, 2]
    with JsonlAppender(p) as w:
        w.write({"id": 3})
    assert [r["id"] for r in iter_jsonl(p)] == [1, 2, 3]


def test_a_bad_line_that_is_not_the_last_is_still_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": 1}\n{"id": \xec\x9e\n{"id": 3}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: not valid UTF-8"):
        list(iter_jsonl(p, allow_torn_tail=True))


def test_disk_full_while_appending_keeps_the_lines_before(tmp_path):
    p = tmp_path / "out.jsonl"
    code = (
        "import sys\nfrom dnfbot.io import JsonlAppender\n"
        "w = JsonlAppender(sys.argv[1])\n"
        "for i in range(10000):\n    w.write({'id': i, 'text': '무의 장막 ' * 20})\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        preexec_fn=_small_file_limit,
    )
    assert r.returncode != 0 and "file too large" in r.stderr.strip().splitlines()[-1]
    kept = list(iter_jsonl(p, allow_torn_tail=True))
    assert kept and [x["id"] for x in kept] == list(range(len(kept)))
    with JsonlAppender(p) as w:  # resume: the torn tail is cut, appending goes on
        w.write({"id": len(kept)})
    assert [x["id"] for x in iter_jsonl(p)] == list(range(len(kept) + 1))


@pytest.mark.parametrize(
    "content, needles",
    [
        (
            '{"id": "a", "text": "장막 \\ud800 공략입니다. 신수는 로그가 좋습니다."}\n',
            [":1:", "lone surrogate", "\\ud800"],
        ),
        (
            '{"id": "a", "text": "ok ok ok ok ok ok ok ok ok ok ok"}\n' + "[" * 100000 + "]" * 100000 + "\n",
            [":2:", "nested too deeply"],
        ),
        (
            '{"id": "a", "text": "ok ok ok ok ok ok ok ok", "metadata": {"category1": 3}}\n',
            [":1:", "metadata.category1", "string"],
        ),
    ],
    ids=["lone-surrogate", "deep-nesting", "numeric-category"],
)
def test_bad_jsonl_corpus_lines_are_one_line_errors(tmp_path, content, needles):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(content, encoding="utf-8", errors="surrogatepass")
    r = cli("index", "build", "--corpus", str(corpus), "--index-dir", str(tmp_path / "index"))
    one_line_error(r, str(corpus), *needles)


def test_guide_json_with_a_numeric_category_or_deep_nesting(tmp_path):
    data = json.loads(MINI.read_text(encoding="utf-8"))
    key = next(iter(data["category1"]))
    data["category1"][key] = 7
    bad = tmp_path / "guide.json"
    bad.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    r = cli("index", "build", "--corpus", str(bad), "--index-dir", str(tmp_path / "i"))
    one_line_error(r, str(bad), f"category1['{key}']", "string")
    bad.write_text("[" * 200000 + "]" * 200000, encoding="utf-8")
    one_line_error(
        cli("index", "build", "--corpus", str(bad), "--index-dir", str(tmp_path / "i")), "nested too deeply"
    )


def test_config_in_cp949_or_a_folder_is_one_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes("# 설정\nretrieval: {k: 3}\n".encode("cp949"))
    one_line_error(cli("config", "--config", str(cfg)), str(cfg), "not valid UTF-8")
    one_line_error(cli("config", "--config", str(tmp_path)), str(tmp_path), "directory")


# --- linear-cost tokenization ----------------------------------------------------------------------------------
def test_long_documents_reach_kiwi_in_bounded_windows_with_exact_offsets(monkeypatch):
    from dnfbot.retrieval.tokenizer import get_tokenizer, text_windows

    tok = get_tokenizer()
    para = "무의 장막 공략입니다. 신수는 로그가 좋고 마법부여는 힘으로 합니다.\n\n"
    long_text = para * 3000  # 108k characters: above the whole-text limit
    short = para * 20
    seen: list[int] = []
    real = tok._kiwi.tokenize

    def spy(texts, *a, **k):
        texts = list(texts)
        seen.extend(len(t) for t in texts)
        return real(texts, *a, **k)

    monkeypatch.setattr(tok._kiwi, "tokenize", spy)
    pieces = list(
        tok.tokenize_spans_windowed([short, long_text], max_whole=20_000, window=4000, batch_chars=50_000)
    )
    assert max(seen) <= 20_000 and sum(seen) == len(short) + len(long_text)
    by_text: dict[int, list] = {0: [], 1: []}
    for ti, _covered, spans in pieces:
        by_text[ti].extend(spans)
    assert by_text[0] == tok.tokenize_spans_many([short])[0]  # a short text: tokenized whole, as before
    spans = by_text[1]
    assert all(0 <= s < e <= len(long_text) for _, s, e in spans)
    assert all(long_text[s:e] == "장막" for t, s, e in spans if t == "장막")  # offsets are the text's own
    starts = [s for _, s, _ in spans]
    assert starts == sorted(starts) and spans[-1][2] <= len(long_text)
    assert sum(1 for t, _, _ in spans if t == "장막") == 3000  # nothing lost or doubled at window edges
    windows = text_windows(long_text, 4000)
    assert windows[0][0] == 0 and windows[-1][1] == len(long_text)
    assert all(b - a <= 4000 and long_text[b - 2 : b] == "\n\n" for a, b in windows[:-1])


def test_streamed_chunk_spans_equal_whole_document_spans():
    from dnfbot.corpus import load_corpus
    from dnfbot.corpus.chunking import chunk_documents
    from dnfbot.retrieval.index import chunk_spans_stream
    from dnfbot.retrieval.sparse import chunk_spans_from_doc
    from dnfbot.retrieval.tokenizer import get_tokenizer

    tok = get_tokenizer()
    docs, _ = load_corpus([MINI])
    chunks = chunk_documents(docs, 200, 40)
    streamed = [spans for _, _, spans in chunk_spans_stream(tok, docs, chunks)]
    whole = []
    for d, spans in zip(docs, tok.tokenize_spans_many([d.text for d in docs]), strict=True):
        whole.extend(chunk_spans_from_doc(spans, [c for c in chunks if c.doc_id == d.doc_id]))
    assert streamed == whole and len(streamed) == len(chunks)
    for c, spans in zip(chunks, streamed, strict=True):
        assert all(c.text[s:e] for _, s, e in spans) and all(0 <= s < e <= len(c.text) for _, s, e in spans)


def test_field_builder_is_bit_identical_to_bm25s():
    import bm25s

    from dnfbot.retrieval.sparse import Field

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    docs = [list(rng.choice(words, size=int(rng.integers(0, 60)))) for _ in range(200)]
    ours = Field.build(docs, 1.2, 0.75).bm25
    vocab: dict[str, int] = {"": 0}
    ids = [[vocab.setdefault(t, len(vocab)) for t in toks] or [0] for toks in docs]
    ref = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    ref.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    assert ours.vocab_dict == ref.vocab_dict
    for key in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(np.asarray(ours.scores[key]), np.asarray(ref.scores[key]))
    assert ours.scores["data"].dtype == np.float32


def test_atomic_write_into_a_missing_or_blocked_place_is_an_output_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_text(tmp_path / "f" / "sub" / "out.txt", "y")
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "y")


def test_disk_full_when_switching_current_keeps_the_previous_build(built, monkeypatch):
    import errno

    corpus, index_dir = built
    before = live(index_dir)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "atomic_write_text", full)
    with pytest.raises(OutputError) as e:
        build_index([corpus], index_dir, Settings(), force=True)
    msg = str(e.value)
    assert msg.count("cannot write the index") == 1 and "no space left on device" in msg
    assert f"previous index ({before.path.name}) is still live" in msg
    assert live(index_dir).path == before.path and not list(index_dir.glob(".tmp-*"))
    monkeypatch.undo()
    after = build_index([corpus], index_dir, Settings(), force=True).build
    assert [p.name for p in index_dir.glob("build-*")] == [after.path.name]  # the orphan is cleaned up
