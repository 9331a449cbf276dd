"""The CLI contract (other tools drive it): --json shapes, batch mode, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnfbot import NO_INFO_ANSWER
from dnfbot.cli import app

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def built(tmp_path):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    index_dir = tmp_path / "index"
    r = run("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--json")
    assert r.exit_code == 0, r.output
    return corpus, index_dir


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_index_build_json(built, tmp_path):
    corpus, index_dir = built
    r = run("index", "build", "--corpus", str(corpus), "--index-dir", str(index_dir), "--json")
    d = json.loads(r.stdout)
    assert d["rebuilt"] is False and d["documents"] == 6 and d["corpus"]["skipped_empty"] == 1


def test_search_and_ask_json_contract(built):
    _, index_dir = built
    r = run("search", "무의 장막 신수", "--k", "2", "--index-dir", str(index_dir), "--json")
    d = json.loads(r.stdout)
    assert (
        set(d) == {"question", "mode", "reranked", "results"}
        and d["mode"] == "sparse"
        and len(d["results"]) <= 2
    )
    assert set(d["results"][0]) == {"doc_id", "title", "part", "score"} and d["results"][0]["doc_id"] == "0"
    r = run("ask", "더스크 피로도 얼마나 들어?", "--index-dir", str(index_dir), "--json")
    d = json.loads(r.stdout)
    assert set(d) == {"answer", "answered", "sources", "sentences"} and d["answered"] is True
    assert set(d["sources"][0]) == {"doc_id", "title", "part", "score", "n"}
    assert d["sentences"] and all(set(s) == {"text", "source"} for s in d["sentences"])
    assert {s["source"] for s in d["sentences"]} == {s["n"] for s in d["sources"]}  # only contributors listed
    r = run("ask", "오늘 서울 날씨 어때?", "--index-dir", str(index_dir), "--json")
    assert json.loads(r.stdout) == {
        "answer": NO_INFO_ANSWER,
        "answered": False,
        "sources": [],
        "sentences": [],
    }


def test_batch_mode_one_line_per_query(built, tmp_path):
    _, index_dir = built
    q = tmp_path / "q.jsonl"
    q.write_text(
        "\n".join(
            json.dumps({"question": x}, ensure_ascii=False)
            for x in ["무의 장막 신수", "어둑섬 입장 조건", "롤 챔피언 티어"]
        )
        + "\n",
        encoding="utf-8",
    )
    r = run("search", "--queries", str(q), "--k", "5", "--index-dir", str(index_dir), "--json")
    lines = _json_lines(r.stdout)
    assert [x["question"] for x in lines] == ["무의 장막 신수", "어둑섬 입장 조건", "롤 챔피언 티어"]
    assert all(set(x) == {"question", "mode", "reranked", "results"} for x in lines)
    r = run("ask", "--queries", str(q), "--index-dir", str(index_dir), "--json")
    lines = _json_lines(r.stdout)
    assert len(lines) == 3 and lines[2]["answered"] is False and lines[1]["answered"] is True


@pytest.mark.parametrize(
    "content, message",
    [
        ("{bad json\n", "malformed JSON line"),
        ('{"q": "x"}\n', "missing or empty field 'question'"),
        ('{"question": "  "}\n', "missing or empty field 'question'"),
        ("", "no questions"),
    ],
)
def test_bad_batch_file(built, tmp_path, content, message):
    _, index_dir = built
    q = tmp_path / "bad.jsonl"
    q.write_text(content, encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "dnfbot", "ask", "--queries", str(q), "--index-dir", str(index_dir), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        (["ask", "질문", "--index-dir", str(tmp_path / "none")], "dnfbot index build"),
        (
            [
                "index",
                "build",
                "--corpus",
                str(tmp_path / "missing.json"),
                "--index-dir",
                str(tmp_path / "i"),
            ],
            "corpus not found",
        ),
        (["corpus", "check", str(tmp_path / "missing.json")], "corpus not found"),
    ]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-m", "dnfbot", *args], capture_output=True, text=True)
        assert r.returncode != 0, args
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_empty_query_is_an_error_and_long_query_is_truncated(built):
    _, index_dir = built
    r = subprocess.run(
        [sys.executable, "-m", "dnfbot", "ask", "", "--index-dir", str(index_dir)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "empty question" in r.stderr
    r = run("search", "무의 장막 " * 20000, "--index-dir", str(index_dir), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"]


def test_index_dir_from_dnfbot_home(tmp_path, monkeypatch):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    monkeypatch.setenv("DNFBOT_HOME", str(tmp_path / "home"))
    assert run("index", "build", "--corpus", str(corpus)).exit_code == 0
    assert (tmp_path / "home" / "index" / "CURRENT").exists()
    d = json.loads(run("ask", "더스크 피로도", "--json").stdout)
    assert d["answered"] is True


def test_chat_filters_and_sources(built, capsys):
    from dnfbot.chat import parse_filter, run_chat
    from dnfbot.rag import open_rag

    _, index_dir = built
    f = parse_filter("직업 소드마스터")
    assert (f.category1, f.category2, f.category3) == ("직업", None, "소드마스터")
    f = parse_filter("공략 레기온")
    assert (f.category1, f.category2, f.category3) == ("공략", "레기온", None)
    lines = iter(
        [
            "/filter 공략 레기온",
            "입장 조건 알려줘",
            "/sources",
            "/filter off",
            "오늘 서울 날씨 어때?",
            "/sources",
            "/quit",
        ]
    )
    history = run_chat(open_rag(index_dir), input_fn=lambda _: next(lines))
    assert history[0]["content"] == "입장 조건 알려줘" and "40000" in history[1]["content"]
    assert history[3]["content"] == NO_INFO_ANSWER
    printed = capsys.readouterr().out
    assert "40000" in printed and "1. " in printed  # the streamed answer, then its sources
    assert printed.rstrip().endswith("(no sources)")  # a refusal leaves no sources behind


def test_config_json_shows_defaults():
    d = json.loads(run("config", "--json").stdout)
    assert d["chunk"] == {"size": 3000, "overlap": 250} and d["index_dir"].endswith("index")


def test_bad_config_file_names_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("chunk:\n  size: -5\n", encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "dnfbot", "config", "--config", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "chunk.size" in r.stderr and str(cfg) in r.stderr
