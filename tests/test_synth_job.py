"""`dnfbot synth qa` against a real local OpenAI-compatible HTTP server (dnfbot.bench.fake_openai), driven
through the official openai client: replies, rejects, retries, Retry-After, timeouts, token summary, resume
after a kill, the API-key rule, --dry-run, --limit and the extractive back end through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("openai")  # the synth extra

from dnfbot.bench.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, FakeOpenAI
from dnfbot.cli import app
from dnfbot.errors import InputError
from dnfbot.io import read_jsonl
from dnfbot.synth.client import RetryPolicy
from dnfbot.synth.job import SynthOptions, dry_run, run_synth

runner = CliRunner()

SENTENCES = [
    "이 던전은 매주 목요일에 초기화됩니다.",
    "입장하려면 명성 조건을 먼저 확인해야 합니다.",
    "파티는 네 명으로 구성하는 것이 좋습니다.",
    "보스의 패턴은 단계마다 달라집니다.",
    "클리어 보상은 계정마다 한 번 받을 수 있습니다.",
    "버퍼는 부활 스킬을 아껴 두어야 합니다.",
]


def write_corpus(path: Path, marks: list[str]) -> Path:
    """One passage per mark, each distinct (the corpus loader drops identical texts)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, m in enumerate(marks):
            text = f"[[fake:{m}]] {i}번 글입니다. " + " ".join(SENTENCES)
            f.write(
                json.dumps({"id": f"d{i}", "title": f"공략 {i}", "text": text}, ensure_ascii=False) + "\n"
            )
    return path


@pytest.fixture
def server():
    with FakeOpenAI(retry_after=0.6, slow=3.0) as s:
        yield s


def opts(out: Path, base_url: str, **kw) -> SynthOptions:
    defaults = {
        "model": "fake-model",
        "long_model": None,
        "policy": RetryPolicy(max_retries=3, backoff=0.02, max_backoff=0.1, timeout=1.0),
        "show_progress": False,
        "seed": 0,
    }
    return SynthOptions(out=out, base_url=base_url, **{**defaults, **kw})


def test_scripted_server_records_rejects_retries_tokens(tmp_path, server):
    marks = ["ok", "malformed", "malformed-once", "short-long", "429-once", "500-once", "slow-once", "ok"]
    corpus = write_corpus(tmp_path / "c.jsonl", marks)
    out = tmp_path / "qa.jsonl"
    s = run_synth(opts(out, server.base_url, max_concurrency=4), [corpus])

    recs = read_jsonl(out)
    rejects = read_jsonl(tmp_path / "qa.rejects.jsonl")
    assert s["records"] == len(recs) == 6 and s["rejects"] == len(rejects) == 2
    assert sorted(r["doc_id"] for r in recs) == ["d0", "d2", "d4", "d5", "d6", "d7"]
    r = next(r for r in recs if r["doc_id"] == "d0")
    assert list(r) == [
        "id",
        "doc_id",
        "chunk_id",
        "subject",
        "question",
        "long",
        "medium",
        "short",
        "model",
        "generator",
        "usage",
    ]
    assert (
        r["chunk_id"] == "d0#1" and r["subject"] == "공략 0" and r["question"] == "공략 0에 대해 알려주세요."
    )
    assert r["model"] == "fake-model" and r["generator"] == "openai"
    assert r["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "attempts": 1,
    }
    assert next(r for r in recs if r["doc_id"] == "d2")["usage"]["attempts"] == 2  # malformed once, then fine

    reasons = {r["doc_id"]: r["reason"] for r in rejects}
    assert reasons["d1"].startswith("invalid reply: part without a 질문/장문/중문/단문 label")
    assert reasons["d3"] == "invalid reply: long answer has 2 sentences (needs 5 or more)"
    assert all(r["retryable"] is False and r["usage"]["attempts"] == 3 for r in rejects)

    # 2 invalid retries for each always-bad passage + 1 for malformed-once; one each of 429, 5xx, timeout
    assert s["retries"] == {
        "http_429": 1,
        "http_5xx": 1,
        "timeout": 1,
        "connection": 0,
        "bad_reply": 0,
        "invalid_reply": 5,
        "total": 8,
    }
    replies = 6 * 1 + 2 * 3 + 1  # every reply that came back (the timed-out request never did)
    assert (
        s["prompt_tokens"] == replies * PROMPT_TOKENS
        and s["completion_tokens"] == replies * COMPLETION_TOKENS
    )
    assert s["cost_usd"] is None and s["unpriced_models"] == ["fake-model"]

    # Retry-After honoured: the retry of the 429 came no sooner than 0.6 s after it
    t429 = [r.time for r in server.requests if r.mark == "429-once"]
    assert len(t429) == 2 and t429[1] - t429[0] >= 0.55

    # resume: nothing left to do, nothing duplicated; content rejects are not retried
    s2 = run_synth(opts(out, server.base_url), [corpus])
    assert s2["already_done"] == 8 and s2["processed"] == 0 and len(read_jsonl(out)) == 6


def test_price_table_gives_cost(tmp_path, server):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  fake-model: {input: 1.0, output: 2.0}\n", encoding="utf-8")
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok", "ok", "ok"])
    s = run_synth(opts(tmp_path / "qa.jsonl", server.base_url, prices=prices), [corpus])
    assert s["records"] == 3
    assert s["cost_usd"] == pytest.approx((3 * PROMPT_TOKENS * 1.0 + 3 * COMPLETION_TOKENS * 2.0) / 1e6)


def test_server_failures_are_retryable_and_a_dead_server_stops_the_job(tmp_path, server):
    corpus = write_corpus(tmp_path / "c.jsonl", ["500-always", "ok", "hang"])
    out = tmp_path / "qa.jsonl"
    policy = RetryPolicy(max_retries=1, backoff=0.01, max_backoff=0.02, timeout=0.5)
    s = run_synth(opts(out, server.base_url, policy=policy), [corpus])
    assert s["records"] == 1 and s["rejects"] == 2
    rej = {r["doc_id"]: r for r in read_jsonl(tmp_path / "qa.rejects.jsonl")}
    assert rej["d0"]["reason"] == "http_5xx after 2 attempts" and rej["d0"]["retryable"] is True
    assert rej["d2"]["reason"] == "timeout after 2 attempts"
    # retryable rejects are tried again by the next run (and fail again here)
    s2 = run_synth(opts(out, server.base_url, policy=policy), [corpus])
    assert s2["already_done"] == 1 and s2["rejects"] == 2

    # max_failures passages in a row failing on the server: a one-line error, output still valid JSONL
    with pytest.raises(InputError, match="2 passages in a row"):
        run_synth(opts(out, server.base_url, policy=policy, max_failures=2, max_concurrency=1), [corpus])
    assert len(read_jsonl(out)) == 1


def test_empty_and_non_completion_replies_are_retried_never_final_rejects(tmp_path, server):
    # a faulty server (or proxy) answers 200 with an empty completion, no choices, or an HTML page
    marks = ["empty-once", "no-choices-once", "not-json-once", "ok"]
    corpus = write_corpus(tmp_path / "c.jsonl", marks)
    out = tmp_path / "qa.jsonl"
    s = run_synth(opts(out, server.base_url), [corpus])
    assert s["records"] == 4 and s["rejects"] == 0 and s["retries"]["bad_reply"] == 3

    # no retries left: each becomes a *retryable* reject, and a re-run (now healthy) synthesises all three
    out2, fresh = tmp_path / "qa2.jsonl", tmp_path / "c2.jsonl"
    corpus2 = write_corpus(fresh, ["empty-once", "no-choices-once", "not-json-once"])
    server._attempts.clear()
    no_retry = RetryPolicy(max_retries=0, backoff=0.01, max_backoff=0.02, timeout=1.0)
    s = run_synth(opts(out2, server.base_url, policy=no_retry), [corpus2])
    rejects = read_jsonl(tmp_path / "qa2.rejects.jsonl")
    assert s["records"] == 0 and len(rejects) == 3 and all(r["retryable"] for r in rejects)
    assert any("not a chat completion" in r["reason"] and "html" in r["reason"] for r in rejects)
    s2 = run_synth(opts(out2, server.base_url, policy=no_retry), [corpus2])
    assert s2["records"] == 3 and len(read_jsonl(out2)) == 3


def test_an_old_empty_reply_reject_is_tried_again(tmp_path, server):
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok"])
    out = tmp_path / "qa.jsonl"
    s = run_synth(opts(out, server.base_url), [corpus])
    rec = read_jsonl(out)[0]
    out.write_text("", encoding="utf-8")  # as an older version left it: the reply was empty, kept as final
    old = {"id": rec["id"], "doc_id": "d0", "reason": "invalid reply: empty", "retryable": False}
    (tmp_path / "qa.rejects.jsonl").write_text(
        json.dumps({**old, "generator": "openai", "reply": ""}) + "\n", encoding="utf-8"
    )
    s = run_synth(opts(out, server.base_url), [corpus])
    assert s["records"] == 1 and s["already_done"] == 0


def test_unreachable_server_is_a_counted_reject(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok"])
    policy = RetryPolicy(max_retries=1, backoff=0.01, timeout=0.5)
    s = run_synth(opts(tmp_path / "qa.jsonl", "http://127.0.0.1:9/v1", policy=policy), [corpus])
    assert s["rejects"] == 1 and s["retries"]["connection"] == 1
    assert read_jsonl(tmp_path / "qa.rejects.jsonl")[0]["reason"] == "connection after 2 attempts"


def test_limit_and_dry_run_send_nothing(tmp_path, server):
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok"] * 5)
    out = tmp_path / "qa.jsonl"
    d = dry_run(opts(out, server.base_url, limit=2, model="gpt-3.5-turbo"), [corpus])
    assert server.requests == [] and not out.exists()
    assert d["passages"] == 2 and d["to_do"] == 2
    assert d["first_prompt"][1]["content"].startswith("다음 내용은 공략 0에 관한 내용입니다.")
    m = d["models"]["gpt-3.5-turbo"]
    assert m["completion_tokens_max"] == 2 * 1024 and m["cost_usd_max"] == pytest.approx(
        (m["prompt_tokens_est"] * 0.5 + 2048 * 1.5) / 1e6
    )
    s = run_synth(opts(out, server.base_url, limit=2), [corpus])
    assert s["records"] == 2 and len(server.requests) == 2


def test_long_passages_go_to_the_long_model(tmp_path, server):
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok"])
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(
            json.dumps({"id": "big", "title": "긴 글", "text": " ".join(SENTENCES * 20)}, ensure_ascii=False)
        )
    s = run_synth(
        opts(
            tmp_path / "qa.jsonl", server.base_url, long_model="fake-long", context_limit=1500, max_tokens=100
        ),
        [corpus],
    )
    assert {r["doc_id"]: r["model"] for r in read_jsonl(tmp_path / "qa.jsonl")} == {
        "d0": "fake-model",
        "big": "fake-long",
    }
    assert s["models"]["fake-long"]["passages"] == 1


def test_cli_key_from_env_never_printed_and_required_for_remote(tmp_path, server, monkeypatch):
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok", "ok"])
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    r = runner.invoke(
        app,
        [
            "synth",
            "qa",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "qa.jsonl"),
            "--base-url",
            server.base_url,
            "--model",
            "m",
            "--no-progress",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["records"] == 2 and summary["requests"] == 2
    assert {r.authorization for r in server.requests} == {f"Bearer {secret}"} and secret not in r.output
    assert secret not in (tmp_path / "qa.jsonl").read_text(encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dnfbot",
            "synth",
            "qa",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "x.jsonl"),
            "--base-url",
            "https://api.example.com/v1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: OPENAI_API_KEY is not set; it is required for https://api.example.com/v1 "
        "(export it, or point --base-url at a local server)"
    ]
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_kill_mid_run_and_resume_loses_and_duplicates_nothing(tmp_path):
    n = 60
    corpus = write_corpus(tmp_path / "c.jsonl", ["ok"] * n)
    out = tmp_path / "qa.jsonl"
    srv = subprocess.Popen(
        [sys.executable, "-m", "dnfbot.bench.fake_openai", "--latency-ms", "100"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = srv.stdout.readline().split()[1]
        cmd = [
            sys.executable,
            "-m",
            "dnfbot",
            "synth",
            "qa",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--base-url",
            base_url,
            "--model",
            "m",
            "--max-concurrency",
            "2",
            "--no-progress",
            "--json",
        ]
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and job.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.05)
        assert job.poll() is None, "the job finished before it could be killed"
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        first = read_jsonl(out, allow_torn_tail=True)
        assert 5 <= len(first) < n

        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["already_done"] == len(first) and s["records"] == n - len(first)
    finally:
        srv.terminate()
        srv.wait(10)
    recs = read_jsonl(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == n
    assert sorted(r["doc_id"] for r in recs) == sorted(f"d{i}" for i in range(n))
    assert recs[: len(first)] == first  # nothing written before the kill was changed


def test_extractive_backend_through_cli(tmp_path):
    corpus = tmp_path / "c.jsonl"
    rows = [
        {"id": "a", "title": "안톤 레이드", "text": " ".join(SENTENCES)},
        {
            "id": "b",
            "title": "짧은 글",
            "text": "문장이 하나뿐인 짧은 글입니다. 나머지는 목록\n- 항목 하나\n- 항목 둘",
        },
    ]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    args = [
        "synth",
        "qa",
        "--backend",
        "extractive",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "qa.jsonl"),
        "--no-progress",
        "--json",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["records"], s["rejects"], s["cost_usd"]) == (1, 1, 0.0)
    rec = read_jsonl(tmp_path / "qa.jsonl")[0]
    assert rec["generator"] == "extractive" and rec["model"] == "extractive-v2" and rec["doc_id"] == "a"
    assert rec["short"] == SENTENCES[0] and rec["question"] == "'안톤 레이드'에서 던전에 대해 알려주세요."
    rej = read_jsonl(tmp_path / "qa.rejects.jsonl")[0]
    assert rej["doc_id"] == "b" and "usable sentences" in rej["reason"]
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["already_done"] == 2 and again["processed"] == 0


def test_malformed_corpus_record_is_a_one_line_error(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"id": "a", "title": "t", "text": "본문입니다."}\n{"id": "b", "title": \n', encoding="utf-8"
    )
    out = tmp_path / "qa.jsonl"
    r = runner.invoke(
        app, ["synth", "qa", "--backend", "extractive", "--corpus", str(corpus), "--out", str(out)]
    )
    assert isinstance(r.exception, InputError) and str(r.exception).startswith(f"{corpus}:2: malformed JSON")
    assert not out.exists()
