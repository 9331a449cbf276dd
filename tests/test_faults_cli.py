"""Fault suite for the command line: bad inputs through the real entry point (`dnfbot.cli.main`, in-process so
that dozens of cases stay cheap; two through a real process) end in one error line naming what is at fault, exit
code 2, and never a traceback. Index damage and disk faults: tests/test_faults_store.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnfbot.cli import main

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
SRC = Path(__file__).parent.parent / "src"


def run_main(args: list[str], capsys, monkeypatch, env: dict | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `dnfbot ARGS` through main(), the boundary the console script uses."""
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["dnfbot", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    code = e.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert code == 2, (code, err)
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every bad input file once: name → path."""
    t = tmp_path_factory.mktemp("faults")
    guide = json.loads(MINI.read_text(encoding="utf-8"))

    def w(name: str, data: str | bytes, enc: str = "utf-8") -> str:
        p = t / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode(enc, errors="replace"))
        return str(p)

    num_cat = json.loads(json.dumps(guide))
    num_cat["category1"]["0"] = 3
    (t / "empty_dir").mkdir()
    (t / "euckr_dir").mkdir()
    (t / "euckr_dir" / "a.txt").write_bytes("던전 공략입니다. 입장 조건을 확인하세요.".encode("euc-kr"))
    qa = {"question": "q?", "long": "l", "medium": "m", "short": "s"}
    return {
        "dir": str(t),
        "afile": w("afile", "x"),
        "cfg_cp949": w("cp949.yaml", "# 설정\nretrieval:\n  k: 3\n", enc="cp949"),
        "cfg_nan": w("nan.yaml", "retrieval:\n  bm25_k1: .nan\n"),
        "cfg_inf": w("inf.yaml", "retrieval:\n  bm25_b: .inf\n"),
        "cfg_overlap_eq": w("ov1.yaml", "chunk:\n  size: 1000\n  overlap: 1000\n"),
        "cfg_overlap_big": w("ov2.yaml", "chunk:\n  size: 1000\n  overlap: 999\n"),
        "cfg_deep": w("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
        "cfg_list": w("list.yaml", "- 1\n- 2\n"),
        "cfg_unknown": w("unknown.yaml", "retrieval:\n  kk: 3\n"),
        "cfg_binary": w("binary.yaml", b"\x00\xff\xfe\x00garbage"),
        "cfg_malformed": w("malformed.yaml", "retrieval: [k: 3\n"),
        "cfg_type": w("type.yaml", "retrieval:\n  k: many\n"),
        "guide_num_cat": w("num_cat.json", json.dumps(num_cat, ensure_ascii=False)),
        "guide_list": w("list.json", "[1, 2, 3]"),
        "guide_empty": w("empty.json", ""),
        "guide_euckr": w("euckr.json", json.dumps(guide, ensure_ascii=False), enc="euc-kr"),
        "jsonl_surrogate": w("surrogate.jsonl", '{"id": "1", "title": "t", "text": "a\\ud800b"}\n'),
        "json_deep": w("deep.json", "[" * 100_000 + "]" * 100_000),
        "jsonl_deep": w("deep.jsonl", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
        "jsonl_not_object": w("array.jsonl", "[1, 2]\n"),
        "empty_dir": str(t / "empty_dir"),
        "euckr_dir": str(t / "euckr_dir"),
        "qa_empty": w("qa_empty.jsonl", ""),
        "qa_malformed": w("qa_bad.jsonl", json.dumps(qa) + "\n{not json\n" + json.dumps(qa) + "\n"),
        "qa_missing_field": w("qa_field.jsonl", json.dumps({"question": "q?"}) + "\n"),
        "q_empty": w("q_empty.jsonl", ""),
        "q_malformed": w("q_bad.jsonl", "{not json\n"),
        "q_no_question": w("q_field.jsonl", json.dumps({"query": "장막"}) + "\n"),
        "q_torn_mid_char": w(
            "q_torn.jsonl", '{"question": "장막"}\n'.encode() + '{"question": "장'.encode()[:-1]
        ),
    }


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    from dnfbot.config import Settings
    from dnfbot.retrieval.index import build_index

    d = tmp_path_factory.mktemp("index") / "index"
    build_index([str(MINI)], d, Settings())
    return str(d)


# name → (args with {file} placeholders, words the error line must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    # usage errors (typer's bundled click): click's message, one line, exit 2
    "k zero": (["search", "x", "--k", "0", "--index-dir", "{index}"], ["--k", "dnfbot search --help"]),
    "k not a number": (["search", "x", "--k", "abc", "--index-dir", "{index}"], ["--k", "valid integer"]),
    "missing required option": (["corpus", "export", "--corpus", str(MINI)], ["Missing option '--out'"]),
    "missing argument": (["corpus", "check"], ["Missing argument"]),
    "unknown option": (["search", "x", "--bogus"], ["No such option: --bogus"]),
    "unknown command": (["frobnicate"], ["No such command 'frobnicate'"]),
    "unknown subcommand": (["index", "frobnicate"], ["No such command 'frobnicate'", "dnfbot index"]),
    "port not a number": (["serve", "--port", "http"], ["--port"]),
    # settings files: the file and the field, refused before anything is built
    "config is a folder": (["config", "--config", "{dir}"], ["{dir}", "directory"]),
    "config in cp949": (["config", "--config", "{cfg_cp949}"], ["cp949.yaml", "UTF-8"]),
    "config not found": (["config", "--config", "{dir}/nope.yaml"], ["nope.yaml", "not found"]),
    "config bm25_k1 nan": (["config", "--config", "{cfg_nan}"], ["nan.yaml", "retrieval.bm25_k1", "finite"]),
    "config bm25_b inf": (["config", "--config", "{cfg_inf}"], ["inf.yaml", "retrieval.bm25_b"]),
    "config overlap = size": (["config", "--config", "{cfg_overlap_eq}"], ["ov1.yaml", "chunk.overlap"]),
    "config overlap 999/1000": (["config", "--config", "{cfg_overlap_big}"], ["ov2.yaml", "chunk.overlap"]),
    "config nested deeply": (["config", "--config", "{cfg_deep}"], ["deep.yaml", "nested too deeply"]),
    "config top level a list": (["config", "--config", "{cfg_list}"], ["list.yaml", "mapping"]),
    "config unknown key": (["config", "--config", "{cfg_unknown}"], ["unknown.yaml", "retrieval.kk"]),
    "config binary": (["config", "--config", "{cfg_binary}"], ["binary.yaml"]),
    "config malformed YAML": (
        ["config", "--config", "{cfg_malformed}"],
        ["malformed.yaml", "malformed YAML"],
    ),
    "config wrong type": (["config", "--config", "{cfg_type}"], ["type.yaml", "retrieval.k"]),
    "build with nan config": (
        ["index", "build", "--corpus", str(MINI), "--index-dir", "{dir}/i1", "--config", "{cfg_nan}"],
        ["nan.yaml", "bm25_k1"],
    ),
    "ask with overlap config": (
        ["ask", "장막?", "--index-dir", "{index}", "--config", "{cfg_overlap_eq}"],
        ["ov1.yaml", "chunk.overlap"],
    ),
    "synth chunk size too small": (
        ["synth", "qa", "--corpus", str(MINI), "--backend", "extractive", "--out", "{dir}/qa.jsonl"]
        + ["--chunk-size", "10"],
        ["--chunk-size", "size"],
    ),
    # corpus files: the file (and the record or field)
    "guide category1 a number": (
        ["corpus", "export", "--corpus", "{guide_num_cat}", "--out", "{dir}/o.jsonl"],
        ["num_cat.json", "category1", "string"],
    ),
    "guide a JSON list": (
        ["corpus", "export", "--corpus", "{guide_list}", "--out", "{dir}/o.jsonl"],
        ["list.json"],
    ),
    "guide empty file": (["corpus", "check", "{guide_empty}"], ["empty.json"]),
    "guide in euc-kr (check)": (["corpus", "check", "{guide_euckr}"], ["euckr.json", "UTF-8"]),
    "folder of euc-kr files (check)": (["corpus", "check", "{euckr_dir}"], ["a.txt", "UTF-8"]),
    "lone surrogate in JSONL": (
        ["corpus", "export", "--corpus", "{jsonl_surrogate}", "--out", "{dir}/o.jsonl"],
        ["surrogate.jsonl:1", "surrogate"],
    ),
    "JSON nested deeply": (
        ["corpus", "export", "--corpus", "{json_deep}", "--out", "{dir}/o.jsonl"],
        ["deep.json", "nested too deeply"],
    ),
    "JSONL line nested deeply": (
        ["index", "build", "--corpus", "{jsonl_deep}", "--index-dir", "{dir}/i2"],
        ["deep.jsonl:1", "nested too deeply"],
    ),
    "JSONL line not an object": (["corpus", "check", "{jsonl_not_object}"], ["array.jsonl:1", "object"]),
    "corpus not found": (
        ["index", "build", "--corpus", "{dir}/missing.json", "--index-dir", "{dir}/i3"],
        ["missing.json", "not found"],
    ),
    "corpus check empty folder": (["corpus", "check", "{empty_dir}"], ["empty_dir", "no .txt or .md"]),
    "corpus export empty folder": (
        ["corpus", "export", "--corpus", "{empty_dir}", "--out", "{dir}/o.jsonl"],
        ["empty_dir"],
    ),
    # outputs that cannot be written
    "--out is a folder": (["corpus", "export", "--corpus", str(MINI), "--out", "{dir}"], ["{dir}", "folder"]),
    "--out under a file": (
        ["corpus", "export", "--corpus", str(MINI), "--out", "{afile}/x.jsonl"],
        ["afile", "is a file"],
    ),
    "data QA missing a field": (
        ["data", "rm", "--qa", "{qa_missing_field}", "--out", "{dir}"],
        ["qa_field.jsonl:1", "long"],
    ),
    # datasets
    "data sft on an empty QA file": (
        ["data", "sft", "--qa", "{qa_empty}", "--out", "{dir}/sft.jsonl", "--corpus", str(MINI)],
        ["qa_empty.jsonl", "no QA records"],
    ),
    "data sft QA is a folder": (
        ["data", "sft", "--qa", "{dir}", "--out", "{dir}/sft.jsonl", "--corpus", str(MINI)],
        ["directory"],
    ),
    "data sft malformed QA line": (
        ["data", "sft", "--qa", "{qa_malformed}", "--out", "{dir}/sft.jsonl", "--corpus", str(MINI)],
        ["qa_bad.jsonl:2", "malformed JSON"],
    ),
    "data rm on an empty QA file": (
        ["data", "rm", "--qa", "{qa_empty}", "--out", "{dir}/rm.jsonl"],
        ["qa_empty"],
    ),
    "data ppo on an empty QA file": (
        ["data", "ppo", "--qa", "{qa_empty}", "--out", "{dir}/ppo.jsonl"],
        ["qa_empty"],
    ),
    # questions, index, back ends
    "no index": (["ask", "장막?", "--index-dir", "{dir}/noindex"], ["noindex", "dnfbot index build"]),
    "status without index": (["index", "status", "--index-dir", "{dir}/noindex"], ["noindex"]),
    "empty question": (["ask", "", "--index-dir", "{index}"], ["empty question"]),
    "--mode bogus": (["search", "장막", "--mode", "bogus", "--index-dir", "{index}"], ["--mode", "bogus"]),
    "queries file missing": (
        ["search", "--queries", "{dir}/nq.jsonl", "--index-dir", "{index}"],
        ["nq.jsonl"],
    ),
    "queries file empty": (["ask", "--queries", "{q_empty}", "--index-dir", "{index}"], ["q_empty.jsonl"]),
    "queries malformed": (
        ["search", "--queries", "{q_malformed}", "--index-dir", "{index}"],
        ["q_bad.jsonl:1"],
    ),
    "queries without question": (
        ["search", "--queries", "{q_no_question}", "--index-dir", "{index}"],
        ["q_field.jsonl:1", "question"],
    ),
    "queries cut mid-character": (
        ["search", "--queries", "{q_torn_mid_char}", "--index-dir", "{index}"],
        ["q_torn.jsonl:2", "UTF-8"],
    ),
    "unknown back end": (["ask", "장막?", "--index-dir", "{index}", "--backend", "bogus"], ["bogus"]),
    "base URL not http": (
        ["ask", "장막?", "--index-dir", "{index}", "--backend", "openai", "--base-url", "ftp://x"],
        ["ftp://x"],
    ),
    "base URL not a URL": (
        ["synth", "qa", "--corpus", str(MINI), "--out", "{dir}/qa2.jsonl", "--base-url", "not a url"],
        ["not a url"],
    ),
    "model path missing": (["generate", "장막?", "--model", "{dir}/nomodel"], ["nomodel", "does not exist"]),
    "model path a file": (["generate", "장막?", "--model", "{afile}"], ["afile", "file"]),
    "eval queries missing": (
        ["eval", "answers", "--queries", "{dir}/nq.jsonl", "--index-dir", "{index}"],
        ["nq"],
    ),
    "plot without run": (["plot", "metrics", "{dir}/norun"], ["norun"]),
    "bench bad factors": (
        ["bench", "index", "--scale", "--factors", "a,b", "--corpus", str(MINI), "--no-write"],
        ["--factors"],
    ),
}


def _fill(args: list[str], files: dict[str, str], index_dir: str) -> list[str]:
    return [a.format(index=index_dir, **files) for a in args]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_error(name, files, index_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DNFBOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DNFBOT_CONFIG", raising=False)
    monkeypatch.delenv("DNFBOT_DEBUG", raising=False)
    args, needles = CASES[name]
    code, _, err = run_main(_fill(args, files, index_dir), capsys, monkeypatch)
    assert_one_line_error(code, err, *(n.format(index=index_dir, **files) for n in needles))


def test_dnfbot_home_a_file(files, capsys, monkeypatch):
    env = {"DNFBOT_HOME": files["afile"]}
    code, _, err = run_main(["index", "build", "--corpus", str(MINI)], capsys, monkeypatch, env)
    assert_one_line_error(code, err, "afile", "is a file")
    code, _, err = run_main(["search", "장막"], capsys, monkeypatch, env)
    assert_one_line_error(code, err, "afile")


def test_dnfbot_config_env_a_folder(files, capsys, monkeypatch):
    code, _, err = run_main(["config"], capsys, monkeypatch, {"DNFBOT_CONFIG": files["dir"]})
    assert_one_line_error(code, err, files["dir"])


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    """A bug is still one line (exit 70, never mistaken for bad input); --debug / DNFBOT_DEBUG=1 re-raise it."""

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("dnfbot.config.load_settings", boom)
    code, _, err = run_main(["config"], capsys, monkeypatch)
    assert code == 70 and err.strip().splitlines() == [
        "error: internal error (ZeroDivisionError: a bug); run with DNFBOT_DEBUG=1 for the traceback"
    ]
    monkeypatch.setattr(sys, "argv", ["dnfbot", "--debug", "config"])
    with pytest.raises(ZeroDivisionError):
        main()
    monkeypatch.setenv("DNFBOT_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["dnfbot", "config"])
    with pytest.raises(ZeroDivisionError):
        main()


def test_keyboard_interrupt_says_so_and_exits_130(capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("dnfbot.config.load_settings", interrupted)
    code, _, err = run_main(["config"], capsys, monkeypatch)
    assert code == 130 and err.strip() == "aborted (interrupted)"


def test_os_errors_name_the_path(capsys, monkeypatch, tmp_path):
    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "x.jsonl"))

    monkeypatch.setattr("dnfbot.config.load_settings", full)
    code, _, err = run_main(["config"], capsys, monkeypatch)
    assert_one_line_error(code, err, "x.jsonl", "No space left")


def test_help_without_arguments_is_not_an_error_line(capsys, monkeypatch):
    code, out, err = run_main(["index"], capsys, monkeypatch)
    assert "Usage" in out + err and "error:" not in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["search", "x", "--k", "0"], ["frobnicate"]])
def test_usage_errors_in_a_real_process(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "DNFBOT_HOME": str(tmp_path)}
    env.pop("DNFBOT_DEBUG", None)
    r = subprocess.run(
        [sys.executable, "-m", "dnfbot", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_synth_resumes_after_a_line_cut_mid_character(tmp_path, capsys, monkeypatch):
    """Disk full during `synth qa` can cut the last line inside a UTF-8 character: resume repairs it."""
    from dnfbot.bench.fake_openai import FakeOpenAI

    monkeypatch.setenv("DNFBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    corpus, out = tmp_path / "c.jsonl", tmp_path / "qa.jsonl"
    text = "이 던전은 매주 목요일에 초기화됩니다. 입장하려면 명성 조건을 먼저 확인해야 합니다."
    corpus.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "title": f"공략 {i}", "text": f"{i}번 글. {text}"}) + "\n"
            for i in range(3)
        ),
        encoding="utf-8",
    )
    with FakeOpenAI() as fake:
        args = ["synth", "qa", "--corpus", str(corpus), "--out", str(out), "--base-url", fake.base_url]
        args += ["--model", "m", "--no-progress", "--json"]
        code, stdout, err = run_main(args, capsys, monkeypatch)
        assert code == 0, err
        lines = out.read_bytes().splitlines(keepends=True)
        assert len(lines) == 3
        last = lines[-1].rstrip(b"\n")
        cut = next(
            i for i in range(len(last) // 2, len(last)) if last[i] >= 0xC0
        )  # a Korean character's lead byte
        out.write_bytes(b"".join(lines[:-1]) + last[: cut + 1])  # cut after that first byte
        code, stdout, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["already_done"] == 2 and s["processed"] == 1 and s["records_total"] == 3
    ids = sorted(json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines())
    assert ids == sorted(json.loads(x)["id"] for x in lines)
