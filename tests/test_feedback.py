"""The answer log and players' feedback: trace capture, the background writer (batched, never blocking, failures as
one line), POST /v1/feedback through the real `openai` client, /good and /bad in chat, ask --log, the exports
(rm, dpo, sft, pairs, eval: deduplicated, split by question group, deterministic), stats with its chart, purge,
a kill -9 of the server mid-write, and the Postgres path when a PostgreSQL server can be started here."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from dnfbot import NO_INFO_ANSWER
from dnfbot.errors import InputError
from dnfbot.feedback.db import StoreError
from dnfbot.feedback.export import export, group_questions
from dnfbot.feedback.store import AnswerLog, iter_answers, open_db, read_feedback
from dnfbot.feedback.trace import AnswerEntry, Traced, make_feedback
from dnfbot.io import read_jsonl
from dnfbot.rag import Answer
from support.guide_index import mini_index

ANSWERED = "더스크 피로도 얼마나 들어?"
REFUSED = "오늘 서울 날씨 어때?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return mini_index(tmp_path_factory.mktemp("feedback"))


@pytest.fixture(scope="module")
def rag(index_dir):
    from dnfbot.rag import open_rag

    return open_rag(index_dir)


def _cli(*args: str):
    from typer.testing import CliRunner

    from dnfbot.cli import app

    return CliRunner().invoke(app, list(args))


def _answer(q: str, text: str, answered: bool = True, sources=None) -> Answer:
    return Answer(q, text, answered, sources or [], 0.8 if answered else 0.1, "extractive", [],
                  "answer" if answered else "no_info", q)  # fmt: skip


def _log(lg: AnswerLog, q: str, text: str, answered: bool = True, sources=None, created=None) -> str:
    e = AnswerEntry(lg.new_id(), "api", _answer(q, text, answered, sources))
    if created is not None:
        e.created = created
    return lg.log(e)


# --- trace capture ------------------------------------------------------------------------------------------
def test_trace_records_what_the_answer_was_built_from(rag, tmp_path):
    with AnswerLog(str(tmp_path / "fb.sqlite3")) as lg:
        t = Traced(lg, rag, "ask", [{"role": "user", "content": "안녕"}], None)
        a = t.rag.ask(ANSWERED)
        aid = t.done(a)
        # the streamed path ends in the same Answer that ask returns
        s = Traced(lg, rag, "chat")
        sources, tokens = s.rag.ask_stream(ANSWERED)
        text = "".join(tokens)
        streamed = s.cap.finish(ANSWERED, text)
        assert (streamed.answer, streamed.sentences, streamed.sources) == (a.answer, a.sentences, a.sources)
        s.done(streamed)
        r = Traced(lg, rag, "chat")
        refused = r.cap.finish(REFUSED, "".join(r.rag.ask_stream(REFUSED)[1]))
        assert refused.answer == NO_INFO_ANSWER and not refused.answered
        r.done(refused)
    db = open_db(str(tmp_path / "fb.sqlite3"))
    rows = {x["id"]: x for x in iter_answers(db)}
    row = rows[aid]
    assert (
        row["answered"] == 1
        and row["turn"] == 2
        and row["channel"] == "ask"
        and row["backend"] == "extractive"
    )
    assert row["question"] == ANSWERED and "30" in row["answer"] and row["latency_ms"] > 0
    assert row["coverage"] > 0 and (row["category1"], row["category3"]) == ("공략", "상급 던전")
    tr = row["trace"]
    assert tr["hits"][0]["doc_id"] == "2" and tr["hits"][0]["score"] > 0 and tr["hits"][0]["chunk_id"]
    assert tr["sentences"][0]["source"] == 1 and tr["sources"][0]["n"] == 1
    assert sorted(x["answered"] for x in rows.values()) == [0, 1, 1]


def test_traced_without_a_log_is_the_plain_rag(rag):
    t = Traced(None, rag, "api")
    assert t.rag is rag and t.done(rag.ask(ANSWERED)) is None and t.id is None


# --- the writer -------------------------------------------------------------------------------------------
def test_logging_never_waits_and_feedback_waits_for_its_commit(tmp_path):
    lg = AnswerLog(str(tmp_path / "fb.sqlite3"))
    ids = []
    t = time.perf_counter()
    for i in range(2000):
        ids.append(_log(lg, f"질문 {i}", "답"))
    per_ms = (time.perf_counter() - t) / 2000 * 1000
    assert per_ms < 1.0, per_ms  # queued, not written, by the caller
    assert lg.feedback(make_feedback(ids[-1], "down", "고친 답")) == "stored"  # FIFO: its answer is in first
    fb = make_feedback(ids[0], "up", feedback_id="retry-key-0001")
    assert lg.feedback(fb) == "stored"
    assert lg.feedback(make_feedback(ids[0], "up", feedback_id="retry-key-0001")) == "duplicate"
    assert lg.feedback(make_feedback("f" * 32, "up")) == "unknown_answer"
    lg.close()
    assert lg.counts["answers"] == 2000 and lg.counts["dropped"] == 0
    db = open_db(str(tmp_path / "fb.sqlite3"))
    assert db.query("SELECT COUNT(*) FROM answers")[0][0] == 2000
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert len(read_feedback(db)) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"answer_id": ""}, "answer_id: required"),
        ({"answer_id": "../../etc"}, "is not an answer id"),
        ({"answer_id": "a" * 32, "rating": "meh"}, "choose up or down"),
        ({"answer_id": "a" * 32}, "give a rating"),
        ({"answer_id": "a" * 32, "correction": "x" * 20_001}, "correction: at most"),
        ({"answer_id": "a" * 32, "rating": "up", "feedback_id": "!"}, "feedback_id"),
    ],
)
def test_bad_feedback_is_one_line(kwargs, message):
    with pytest.raises(InputError, match=message) as e:
        make_feedback(**kwargs)
    assert "\n" not in str(e.value)


def test_a_correction_alone_counts_as_down():
    assert make_feedback("chatcmpl-" + "a" * 32, correction=" 맞는 답 ").rating == "down"
    assert make_feedback("chatcmpl-" + "a" * 32, correction=" 맞는 답 ").answer_id == "a" * 32


def test_corrupted_database_is_one_log_line_and_answering_goes_on(tmp_path, caplog):
    path = tmp_path / "fb.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    caplog.set_level(logging.WARNING, "dnfbot.feedback")
    lg = AnswerLog(str(path))
    t = time.perf_counter()
    for i in range(50):
        _log(lg, f"질문 {i}", "답")
    assert time.perf_counter() - t < 0.5
    with pytest.raises(StoreError, match="not a database"):
        lg.feedback(make_feedback("a" * 32, "up"))
    lg.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "dnfbot.feedback"]
    assert len(lines) == 1 and "\n" not in lines[0] and "answering goes on" in lines[0], lines
    assert lg.counts["dropped"] == 50


def test_a_locked_database_delays_the_writer_not_the_answers(tmp_path):
    path = tmp_path / "fb.sqlite3"
    lg = AnswerLog(str(path))
    first = _log(lg, "처음", "답")
    lg.flush()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing for a while
    t = time.perf_counter()
    ids = [_log(lg, f"잠김 {i}", "답") for i in range(100)]
    assert time.perf_counter() - t < 0.5
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    assert lg.feedback(make_feedback(first, "up"), timeout=20) == "stored"
    lg.close()
    holder.close()
    db = open_db(str(path))
    assert db.query("SELECT COUNT(*) FROM answers")[0][0] == 101 and lg.counts["dropped"] == 0, ids[:1]


# --- exports ------------------------------------------------------------------------------------------------
def _populated(tmp_path) -> str:
    """A log with: a question answered wrongly (👎 + correction) and its near-duplicate answered well (👍); a
    refused question whose near-duplicate got an upvoted answer; a 👎 refusal; an unrated answer."""
    url = str(tmp_path / "fb.sqlite3")
    src = [{"doc_id": "2", "title": "노블레스 코드 더스크 리뷰", "part": 1, "score": 3.0, "n": 1}]
    with AnswerLog(url) as lg:
        bad = _log(
            lg, "더스크 피로도 얼마나 들어?", "일일 입장 제한은 없습니다. [1]", sources=src, created=1000.0
        )
        good = _log(lg, "더스크 피로도 얼마나 들어??", "더스크는 고정 피로도 30을 소모합니다. [1]", sources=src,
                    created=1001.0)  # fmt: skip
        refused = _log(lg, "더스크  피로도 얼마나 들어", NO_INFO_ANSWER, answered=False, created=1002.0)
        missing = _log(lg, "안개신 레이드 보상 뭐야?", NO_INFO_ANSWER, answered=False, created=1003.0)
        wrong = _log(lg, "어둑섬 몇 인이야?", "어둑섬은 4인 레기온입니다. [1]", created=1004.0)
        _log(lg, "무의 장막 몇 인?", "무의 장막은 8인 레이드입니다.", created=1005.0)  # never rated
        lg.feedback(make_feedback(wrong, "down"))
        lg.feedback(make_feedback(bad, "down"))
        lg.feedback(make_feedback(bad, correction="더스크는 고정 피로도 30을 씁니다."))
        lg.feedback(make_feedback(good, "down"))
        lg.feedback(make_feedback(good, "up"))  # changed their mind: the latest rating counts
        lg.feedback(make_feedback(missing, "down", comment="이건 알아야지"))
        del refused
    return url


def test_questions_group_with_their_near_duplicates():
    from dnfbot.feedback.export import Rated

    items = [Rated({"question": q}) for q in ("무장 입장 명성 얼마?", "무장 입장명성 얼마??", "바칼 3단계 공략",
                                              "바칼 4단계 공략", "어둑섬 보상")]  # fmt: skip
    groups = group_questions(items)
    assert [len(g.members) for g in groups] == [2, 1, 1, 1]  # numbers keep 3단계 and 4단계 apart


def test_export_rm_dpo_sft_eval(tmp_path):
    url = _populated(tmp_path)
    db = open_db(url)
    r = export(db, "rm", tmp_path / "rm.jsonl")
    pairs = read_jsonl(tmp_path / "rm.jsonl")
    assert r["records"] == len(pairs) == 2, pairs
    by = {(p["chosen"], p["rejected"]) for p in pairs}
    assert (
        "더스크는 고정 피로도 30을 씁니다.",
        "일일 입장 제한은 없습니다.",
    ) in by  # correction ≻ the corrected
    assert (
        "더스크는 고정 피로도 30을 소모합니다.",
        "일일 입장 제한은 없습니다.",
    ) in by  # 👍 ≻ 👎, markers out
    assert ("더스크는 고정 피로도 30을 씁니다.", NO_INFO_ANSWER) not in by  # the refusal was not downvoted
    assert len({p["split"] for p in pairs}) == 1  # one question group, one split
    assert all(set(p) >= {"prompt", "chosen", "rejected", "split", "id", "source"} for p in pairs)
    assert {p["prompt"] for p in pairs} == {"더스크 피로도 얼마나 들어?"}
    # deterministic: the same log gives the same bytes
    export(db, "rm", tmp_path / "rm2.jsonl")
    assert (tmp_path / "rm.jsonl").read_bytes() == (tmp_path / "rm2.jsonl").read_bytes()

    assert all(set(p) >= {"prompt", "chosen", "rejected", "id", "source", "split", "pair"} for p in pairs)
    # dpo: the pair records of `data rm` (train dpo reads those), the same as --as rm
    export(db, "dpo", tmp_path / "dpo.jsonl")
    assert read_jsonl(tmp_path / "dpo.jsonl") == pairs
    pytest.importorskip("datasets")
    from dnfbot.train.dpo import build_dpo_dataset

    ds = build_dpo_dataset(read_jsonl(tmp_path / "dpo.jsonl"))  # what `train dpo` trains on
    assert ds[0]["prompt"] == "### 질문: 더스크 피로도 얼마나 들어?\n\n### 답변:" and ds[0][
        "chosen"
    ].startswith(" ")

    export(db, "sft", tmp_path / "sft.jsonl")
    (s,) = read_jsonl(tmp_path / "sft.jsonl")
    assert s["completion"] == "더스크는 고정 피로도 30을 씁니다." and s["text"].endswith("<|endoftext|>")
    assert s["prompt"].startswith("### 질문: ") and s["split"] in ("train", "valid")

    export(db, "eval", tmp_path / "eval.jsonl")
    items = {e["feedback"]["reason"]: e for e in read_jsonl(tmp_path / "eval.jsonl")}
    assert items["refused_but_upvoted_elsewhere"]["gold_doc_ids"] == ["2"]
    assert items["refused_but_upvoted_elsewhere"]["answerable"] is True
    assert items["feedback_missing"]["question"] == "안개신 레이드 보상 뭐야?"
    assert items["refused_but_upvoted_elsewhere"]["feedback"]["corrections"] == [
        "더스크는 고정 피로도 30을 씁니다."
    ]
    assert items["feedback_wrong"]["question"] == "어둑섬 몇 인이야?" and len(items) == 3  # one per question
    from dnfbot.eval.retrieval import load_devset

    assert len(load_devset(tmp_path / "eval.jsonl")) == len(items)  # eval/ can read it as it is

    for kind in ("dpo", "sft", "eval"):  # every format: the same log gives the same bytes
        export(db, kind, tmp_path / f"{kind}-again.jsonl")
        assert (tmp_path / f"{kind}.jsonl").read_bytes() == (tmp_path / f"{kind}-again.jsonl").read_bytes(), (
            kind
        )


def test_export_pairs_uses_the_cited_passage_and_a_hard_negative(rag, tmp_path):
    url = str(tmp_path / "fb.sqlite3")
    with AnswerLog(url) as lg:
        ids = []
        for q in (ANSWERED, "무의 장막 입장 명성 얼마야?"):
            t = Traced(lg, rag, "api")
            ids.append(t.done(t.rag.ask(q)))
        for aid in ids:
            lg.feedback(make_feedback(aid, "up"))
    db = open_db(url)
    r = export(db, "pairs", tmp_path / "pairs.jsonl", index=rag.index)
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert r["records"] == len(pairs) >= 2
    p = next(x for x in pairs if x["query"] == ANSWERED)
    assert (
        p["doc_id"] == "2" and p["passage"].startswith("노블레스 코드 더스크 리뷰\n") and "30" in p["passage"]
    )
    m = next(x for x in pairs if x["query"] == "무의 장막 입장 명성 얼마야?")
    assert m["doc_id"] == "0" and m["negative_chunk_id"] == "1#1" and m["negative"].startswith("어둑섬")
    # a negative, when the trace has a hit from another article, is never from the cited one
    assert "negative" not in p or not p["negative_chunk_id"].startswith(p["doc_id"] + "#")
    from dnfbot.train.embed import load_pairs

    assert len(load_pairs(tmp_path / "pairs.jsonl")) == len(pairs)


def test_export_cli_errors_are_one_line(tmp_path):
    url = str(tmp_path / "fb.sqlite3")
    with AnswerLog(url) as lg:
        _log(lg, "질문", "답")
    for args, msg in [
        (["--as", "bogus"], "choose from rm, dpo, sft, pairs, eval"),
        (["--as", "rm"], "no preference pairs yet"),
        (["--as", "rm", "--valid-fraction", "1.5"], "--valid-fraction"),
    ]:
        res = _cli("feedback", "export", "--db", url, "--out", str(tmp_path / "x.jsonl"), *args)
        assert res.exit_code != 0, res.output
        assert isinstance(res.exception, (InputError, SystemExit)), res.exception
        assert msg in str(res.exception), (args, res.exception)
    res = _cli("feedback", "stats", "--db", str(tmp_path / "none.sqlite3"))
    assert "no feedback database" in str(res.exception)
    res = _cli("feedback", "purge", "--db", url, "--before", "yesterday-ish")
    assert "--before" in str(res.exception)


def test_cli_errors_through_main_have_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    for args in (
        [
            "feedback",
            "export",
            "--as",
            "bogus",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--db",
            str(tmp_path / "n"),
        ],
        ["feedback", "stats", "--db", str(tmp_path / "missing.sqlite3")],
    ):
        p = subprocess.run([sys.executable, "-m", "dnfbot", *args], capture_output=True, text=True, env=env)
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# --- stats and purge ---------------------------------------------------------------------------------------
def test_stats_json_and_chart(tmp_path):
    url = _populated(tmp_path)
    res = _cli("feedback", "stats", "--db", url, "--json", "--png", str(tmp_path / "stats.png"))
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["answers"] == 6 and s["refused"] == 2 and s["refusal_rate"] == round(2 / 6, 4)
    assert s["feedback"]["up"] == 1 and s["feedback"]["down"] == 3 and s["feedback"]["corrections"] == 1
    assert s["down_rate"]["backend"]["extractive"]["down_rate"] == 0.75
    assert [d["refused"] for d in s["most_refused"]] == [1, 1]
    assert {"question": "더스크 피로도 얼마나 들어?", "down": 1, "up": 1, "corrections": 1} in s[
        "most_downvoted"
    ]
    assert s["most_downvoted"][0]["up"] == 0  # ties: the ones nobody liked first
    assert (tmp_path / "stats.png").stat().st_size > 10_000
    text = _cli("feedback", "stats", "--db", url)
    assert "refusal rate 0.3333" in text.stdout and "most refused" in text.stdout


def test_purge_before_a_date(tmp_path):
    url = _populated(tmp_path)  # created at t=1000…1004 s (1970)
    with AnswerLog(url) as lg:
        keep = _log(lg, "새 질문", "새 답")
        lg.feedback(make_feedback(keep, "up"))
    res = _cli("feedback", "purge", "--db", url, "--before", "1970-01-01T00:16:43", "--dry-run", "--json")
    assert json.loads(res.stdout) == {"answers": 3, "feedback": 4, "dry_run": True,
                                      "before": "1970-01-01T00:16:43+00:00"}  # fmt: skip
    res = _cli("feedback", "purge", "--db", url, "--before", "2000-01-01", "--json")
    assert json.loads(res.stdout)["answers"] == 6
    db = open_db(url)
    assert [r["id"] for r in iter_answers(db)] == [keep] and len(read_feedback(db)) == 1
    assert (
        b"\xeb\x8d\x94\xec\x8a\xa4\xed\x81\xac" not in Path(url).read_bytes()
    )  # '더스크' is gone from the file


# --- chat and ask --------------------------------------------------------------------------------------------
def test_bad_in_chat_stores_the_correction(rag, tmp_path, capsys):
    from dnfbot.chat import run_chat

    url = str(tmp_path / "fb.sqlite3")
    lines = iter(["/bad", ANSWERED, "/bad 더스크는 고정 피로도 30을 소모해요.", REFUSED, "/good 모르는 게 맞아요",
                  "/quit"])  # fmt: skip
    with AnswerLog(url) as lg:
        run_chat(rag, input_fn=lambda _: next(lines), answer_log=lg)
    printed = capsys.readouterr().out
    assert "no answer to rate yet" in printed and "고친 답변도 함께 저장했어요" in printed
    db = open_db(url)
    answers = list(iter_answers(db))
    assert [a["turn"] for a in answers] == [1, 2] and answers[0]["conversation"] == answers[1]["conversation"]
    fb = read_feedback(db)
    assert [(f["rating"], f["correction"], f["comment"], f["channel"]) for f in fb] == [
        ("down", "더스크는 고정 피로도 30을 소모해요.", None, "chat"),
        ("up", None, "모르는 게 맞아요", "chat"),
    ]
    assert fb[0]["answer_id"] == answers[0]["id"] and fb[1]["answer_id"] == answers[1]["id"]


def test_ask_log_returns_the_answer_id(index_dir, tmp_path, monkeypatch):
    url = tmp_path / "fb.sqlite3"
    monkeypatch.setenv("DNFBOT_FEEDBACK_DB", str(url))
    res = _cli("ask", ANSWERED, "--index-dir", str(index_dir), "--json", "--log")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    (row,) = iter_answers(open_db(str(url)))
    assert d["answer_id"] == row["id"] and row["channel"] == "ask"
    res = _cli("ask", ANSWERED, "--index-dir", str(index_dir), "--json")  # opt-in: no --log, no id, no row
    assert "answer_id" not in json.loads(res.stdout) and len(list(iter_answers(open_db(str(url))))) == 1
    monkeypatch.setenv("DNFBOT_FEEDBACK_DB", "off")
    res = _cli("ask", ANSWERED, "--index-dir", str(index_dir), "--log")
    assert "switched off" in str(res.exception)


# --- the HTTP API -------------------------------------------------------------------------------------------
def test_api_feedback_round_trip_with_the_openai_client(index_dir, tmp_path):
    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends
    from dnfbot.serve.run import ServerThread

    url = str(tmp_path / "fb.sqlite3")
    app = create_app(open_backends(index_dir), answer_log=AnswerLog(url))
    with ServerThread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        c = client.chat.completions.create(model="dnfbot", messages=[{"role": "user", "content": ANSWERED}])
        assert c.id.startswith("chatcmpl-") and "30" in c.choices[0].message.content
        r = httpx.post(base + "/v1/feedback", json={"answer_id": c.id, "rating": "down",
                                                     "correction": "고정 피로도 30입니다."})  # fmt: skip
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
        # a streamed completion is logged when its stream ends, under the id of its chunks
        stream = client.chat.completions.create(
            model="dnfbot", stream=True, messages=[{"role": "user", "content": "무의 장막 입장 명성 얼마야?"}]
        )
        sid = {ch.id for ch in stream}
        assert len(sid) == 1
        r = httpx.post(base + "/v1/feedback", json={"answer_id": sid.pop(), "rating": "up"})
        assert r.status_code == 200, r.text
        ask = httpx.post(base + "/ask", json={"question": REFUSED}).json()
        assert ask["answered"] is False and len(ask["answer_id"]) == 32
        # bad input: one-line OpenAI-style errors
        for body, status, code in [
            ({"answer_id": "f" * 32, "rating": "up"}, 404, "unknown_answer"),
            ({"answer_id": ask["answer_id"], "rating": "meh"}, 422, "invalid_field"),
            ({"answer_id": ask["answer_id"]}, 422, "invalid_field"),
            ({"answer_id": ask["answer_id"], "rating": "up", "extra": 1}, 422, "invalid_field"),
        ]:
            r = httpx.post(base + "/v1/feedback", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
            assert "\n" not in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/feedback", content=b"{not json")
        assert r.status_code == 400
    db = open_db(url)
    rows = {a["id"]: a for a in iter_answers(db)}
    assert len(rows) == 3 and rows[c.id.removeprefix("chatcmpl-")]["channel"] == "api"
    assert len(read_feedback(db)) == 2
    export(db, "rm", tmp_path / "rm.jsonl")
    (pair,) = read_jsonl(tmp_path / "rm.jsonl")
    assert pair["chosen"] == "고정 피로도 30입니다." and "30" in pair["rejected"]


def test_api_without_a_log_says_so(index_dir):
    httpx = pytest.importorskip("httpx")
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends
    from dnfbot.serve.run import ServerThread

    with ServerThread(create_app(open_backends(index_dir))) as base:
        assert "answer_id" not in httpx.post(base + "/ask", json={"question": ANSWERED}).json()
        r = httpx.post(base + "/v1/feedback", json={"answer_id": "a" * 32, "rating": "up"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "feedback_disabled"


def test_api_keeps_answering_when_the_store_is_broken(index_dir, tmp_path):
    httpx = pytest.importorskip("httpx")
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends
    from dnfbot.serve.run import ServerThread

    bad = tmp_path / "fb.sqlite3"
    bad.write_bytes(b"garbage!" * 512)
    with ServerThread(create_app(open_backends(index_dir), answer_log=AnswerLog(str(bad)))) as base:
        ask = httpx.post(base + "/ask", json={"question": ANSWERED})
        assert ask.status_code == 200 and ask.json()["answered"]
        r = httpx.post(base + "/v1/feedback", json={"answer_id": ask.json()["answer_id"], "rating": "up"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        assert "not a database" in r.json()["error"]["message"]


# --- kill -9 ------------------------------------------------------------------------------------------------
def test_kill_9_mid_write_loses_no_committed_feedback(index_dir, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    db_path = tmp_path / "fb.sqlite3"
    env = dict(os.environ, DNFBOT_FEEDBACK_DB=str(db_path),
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))  # fmt: skip
    cmd = [sys.executable, "-m", "dnfbot", "serve", "--port", "0", "--json", "--no-access-log",
           "--index-dir", str(index_dir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        base = json.loads(proc.stdout.readline())["url"]
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        ids = [httpx.post(base + "/ask", json={"question": ANSWERED}).json()["answer_id"] for _ in range(5)]
        acked: list[str] = []
        stop = threading.Event()

        def client(n: int) -> None:
            with httpx.Client(timeout=5) as c:
                i = 0
                while not stop.is_set():
                    key = f"{n:02d}{i:06d}" + uuid.uuid4().hex[:8]
                    i += 1
                    try:
                        r = c.post(
                            base + "/v1/feedback",
                            json={
                                "answer_id": ids[i % 5],
                                "rating": "down",
                                "correction": f"답 {key}",
                                "feedback_id": key,
                            },
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        acked.append(key)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 150:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: four clients are posting
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in conn.execute("SELECT id FROM feedback")}
    lost = [k for k in acked if k not in stored]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged feedback rows lost"
    assert len(stored) == conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


# --- PostgreSQL ---------------------------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture
def postgres_url(tmp_path):
    """A throwaway PostgreSQL server on a Unix socket (skips without the server binaries or psycopg)."""
    pytest.importorskip("psycopg")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    root = Path(f"/tmp/dnfbot-pg-{uuid.uuid4().hex[:8]}")  # short: a socket path has a length limit
    root.mkdir()
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser")
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if as_user else os.environ.get("USER", "postgres")
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", user, "--auth=trust"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-k {sock} -c listen_addresses='' -p 5439", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://{user}@/postgres?host={sock}&port=5439"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_postgres_path_is_the_same_code(postgres_url, tmp_path):
    url = postgres_url
    with AnswerLog(url) as lg:
        bad = _log(lg, "더스크 피로도 얼마나 들어?", "일일 입장 제한은 없습니다. [1]", created=1000.0)
        assert (
            lg.feedback(make_feedback(bad, correction="고정 피로도 30입니다.", feedback_id="pg-key-0001"))
            == "stored"
        )
        assert lg.feedback(make_feedback(bad, "down", feedback_id="pg-key-0001")) == "duplicate"
        assert lg.feedback(make_feedback("e" * 32, "down")) == "unknown_answer"
    res = _cli("feedback", "export", "--db", url, "--as", "rm", "--out", str(tmp_path / "rm.jsonl"), "--json")
    assert res.exit_code == 0, res.output
    (pair,) = read_jsonl(tmp_path / "rm.jsonl")
    assert pair["chosen"] == "고정 피로도 30입니다."
    s = json.loads(_cli("feedback", "stats", "--db", url, "--json").stdout)
    assert s["answers"] == 1 and s["feedback"]["corrections"] == 1 and "***" not in s["db"]
    res = _cli("feedback", "purge", "--db", url, "--before", "2000-01-01", "--json")
    assert json.loads(res.stdout)["answers"] == 1
    assert list(iter_answers(open_db(url))) == []
