"""The HTTP API over real HTTP: uvicorn on a free loopback port, driven by httpx and the official OpenAI client."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("uvicorn")

import httpx

from dnfbot import NO_INFO_ANSWER
from dnfbot.bench.fake_openai import FakeOpenAI
from dnfbot.serve.app import create_app
from dnfbot.serve.backends import open_backends
from dnfbot.serve.guard import Limits
from dnfbot.serve.run import ServerThread
from support.guide_index import mini_index

KEY = "s3cret-key-123"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return mini_index(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def backends(index_dir):
    return open_backends(index_dir)


@pytest.fixture(scope="module")
def url(backends):
    with ServerThread(create_app(backends)) as u:
        yield u


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of a server-sent-event stream, JSON-decoded except the final [DONE]."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def test_healthz_models_search_ask(url):
    h = httpx.get(url + "/healthz").json()
    assert (
        h["status"] == "ok" and h["backends"] == ["extractive"] and h["chunks"] == 6 and h["in_flight"] == 0
    )
    m = httpx.get(url + "/v1/models").json()
    assert m["object"] == "list" and [x["id"] for x in m["data"]] == ["dnfbot-extractive"]
    s = httpx.post(url + "/search", json={"question": "무의 장막 신수", "k": 2}).json()
    assert 1 <= len(s["results"]) <= 2 and s["results"][0]["doc_id"] == "0" and "text" not in s["results"][0]
    s = httpx.post(url + "/search", json={"question": "무의 장막 신수", "k": 1, "with_text": True}).json()
    assert "로그 신수" in s["results"][0]["text"]
    a = httpx.post(url + "/ask", json={"question": "더스크 피로도 얼마나 들어?"}).json()
    assert (
        a["answered"] is True
        and "30" in a["answer"]
        and a["sources"][0]["title"] == "노블레스 코드 더스크 리뷰"
    )
    a = httpx.post(url + "/ask", json={"question": "오늘 서울 날씨 어때?"}).json()
    assert a == {"answer": NO_INFO_ANSWER, "answered": False, "sources": [], "sentences": []}


def test_ask_filters_and_history(url):
    legion = httpx.post(
        url + "/ask", json={"question": "입장 조건은?", "category1": "공략", "category2": "레기온"}
    )
    assert legion.json()["sources"][0]["doc_id"] == "1" and "40000" in legion.json()["answer"]
    raid = httpx.post(
        url + "/ask", json={"question": "입장 조건은?", "category1": "공략", "category2": "레이드"}
    )
    assert {s["doc_id"] for s in raid.json()["sources"]} <= {"0"}
    # A follow-up leans on the previous question: the retrieval query is rewritten from the conversation.
    history = [
        {"role": "user", "content": "어둑섬 레기온 알려줘"},
        {"role": "assistant", "content": "4인 레기온입니다."},
    ]
    follow = httpx.post(url + "/ask", json={"question": "보상은?", "history": history}).json()
    assert follow["answered"] and follow["sources"][0]["doc_id"] == "1" and "1000골드" in follow["answer"]


def test_chat_completions_plain_and_streaming(url):
    body = {"model": "dnfbot", "messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}]}
    r = httpx.post(url + "/v1/chat/completions", json=body).json()
    assert r["object"] == "chat.completion" and r["model"] == "dnfbot-extractive"
    answer = r["choices"][0]["message"]["content"]
    assert "30" in answer and r["choices"][0]["finish_reason"] == "stop"
    assert r["dnfbot_answered"] is True and r["dnfbot_sources"][0]["doc_id"] == "2"

    with httpx.stream("POST", url + "/v1/chat/completions", json=dict(body, stream=True)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    first = events[0]
    assert first["choices"][0]["delta"]["role"] == "assistant" and first["dnfbot_sources"][0]["doc_id"] == "2"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == answer
    assert len({e["id"] for e in events[:-1]}) == 1

    nothing = dict(body, stream=True, messages=[{"role": "user", "content": "오늘 서울 날씨 어때?"}])
    with httpx.stream("POST", url + "/v1/chat/completions", json=nothing) as resp:
        events = sse_events(resp)
    assert events[0]["dnfbot_answered"] is False and events[0]["dnfbot_sources"] == []
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == NO_INFO_ANSWER


def test_official_openai_client_talks_to_it(url):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["dnfbot-extractive"]
    messages = [
        {"role": "system", "content": "ignored: the RAG rules hold"},
        {"role": "user", "content": "어둑섬 레기온 알려줘"},
        {"role": "assistant", "content": "4인 레기온입니다."},
        {"role": "user", "content": [{"type": "text", "text": "보상은?"}]},
    ]
    stream = client.chat.completions.create(model="dnfbot-extractive", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "1000골드" in text
    done = client.chat.completions.create(model="dnfbot-extractive", messages=messages)
    assert done.choices[0].message.content == text
    assert done.model_extra["dnfbot_sources"][0]["doc_id"] == "1"
    with pytest.raises(openai.NotFoundError, match="available: dnfbot-extractive"):
        client.chat.completions.create(model="gpt-4o", messages=messages)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"messages": [', 400, "not valid JSON"),
        (b"question=hi", 400, "not valid JSON"),
        (b'{"messages": []}', 422, "messages"),
        (
            b'{"messages": [{"role": "assistant", "content": "hi"}]}',
            400,
            "last message must have role 'user'",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
            422,
            "max_tokens: at most 4096",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 422, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}', 422, "temperature"),
    ],
)
def test_bad_chat_requests(url, body, status, needle):
    r = httpx.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text


def test_bad_ask_and_search_requests(url):
    r = httpx.post(url + "/ask", json={"question": "hi", "surprise": 1})
    assert r.status_code == 422 and "surprise" in r.json()["error"]["message"]
    r = httpx.post(url + "/ask", json={"question": "hi", "backend": "hf"})
    assert r.status_code == 422 and "backend: unknown 'hf'" in r.json()["error"]["message"]
    r = httpx.post(url + "/search", json={"question": "무의 장막", "k": 0})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("k:")
    r = httpx.post(url + "/ask", json={"question": "   "})
    assert r.status_code == 400 and "empty question" in r.json()["error"]["message"]
    assert httpx.get(url + "/nope").status_code == 404


def test_body_size_limit_with_and_without_content_length(backends):
    app = create_app(backends, limits=Limits(max_body_bytes=2048))
    with ServerThread(app) as url:
        big = {"question": "무의 장막 " * 1000}
        r = httpx.post(url + "/ask", json=big)
        assert r.status_code == 413 and "over 2048 bytes" in r.json()["error"]["message"]

        def chunks():  # no content-length: the guard counts bytes as they arrive
            for _ in range(10):
                yield b'{"question": "' + b"a" * 500
            yield b'"}'

        r = httpx.post(url + "/ask", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(url + "/ask", json={"question": "더스크 피로도"}).status_code == 200
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0


def test_api_key_is_required_and_compared(backends, monkeypatch):
    with ServerThread(create_app(backends, api_key=KEY)) as url:
        assert httpx.get(url + "/healthz").status_code == 200  # liveness stays open
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        ok = httpx.post(
            url + "/ask", json={"question": "더스크 피로도"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200 and ok.json()["answered"]


def test_openai_backend_behind_the_api_and_429_when_saturated(index_dir):
    """The `openai` generator through the API against a real fake server; slow streams fill the 2 slots."""
    with FakeOpenAI(token_delay_s=0.25) as fake:
        b = open_backends(index_dir, backend="openai", model="fake-model", base_url=fake.base_url)
        assert b.names == ["openai", "extractive"] and b.default == "openai"
        with ServerThread(create_app(b, limits=Limits(max_concurrent=2, retry_after_s=3))) as url:
            r = httpx.post(url + "/ask", json={"question": "더스크 피로도 얼마나 들어?"}).json()
            assert r["answered"] and r["answer"].startswith("노블레스 코드 더스크 리뷰 공략에 따르면")
            sent = fake.requests[-1].body["messages"]
            assert sent[0]["role"] == "system" and "제가 알고 있는 정보가 없습니다." in sent[0]["content"]
            assert "<context>" in sent[-1]["content"] and "고정 피로도 30" in sent[-1]["content"]
            # The extractive back end stays available by name.
            m = {
                "model": "dnfbot-extractive",
                "messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}],
            }
            assert (
                "30"
                in httpx.post(url + "/v1/chat/completions", json=m).json()["choices"][0]["message"]["content"]
            )

            slow = {"stream": True, "messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}]}

            def one(_):
                with httpx.stream("POST", url + "/v1/chat/completions", json=slow, timeout=30) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        return resp.status_code, resp.headers.get("retry-after"), None
                    return 200, None, sse_events(resp)

            with ThreadPoolExecutor(6) as pool:
                results = list(pool.map(one, range(6)))
            served = [r for r in results if r[0] == 200]
            refused = [r for r in results if r[0] == 429]
            assert len(served) + len(refused) == 6 and 1 <= len(served) <= 2 and len(refused) >= 4
            assert all(r[1] == "3" for r in refused)
            for _, _, events in served:
                assert events[-1] == "[DONE]" and "공략에 따르면" in "".join(
                    e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                )
            assert httpx.get(url + "/healthz").json()["in_flight"] == 0

            # Upstream failure: a 502 naming the server (never the key), or an in-band error event when streaming.
            fake.status = 500
            bad = {"messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}]}
            r = httpx.post(url + "/v1/chat/completions", json=bad)
            assert r.status_code == 502 and "answered 500" in r.json()["error"]["message"]
            with httpx.stream("POST", url + "/v1/chat/completions", json=dict(bad, stream=True)) as resp:
                events = sse_events(resp)
            assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "generator_failed"


def test_client_that_hangs_up_mid_stream_frees_its_slot(index_dir):
    with FakeOpenAI(token_delay_s=0.3) as fake:
        b = open_backends(index_dir, backend="openai", model="fake-model", base_url=fake.base_url)
        with ServerThread(create_app(b, limits=Limits(max_concurrent=1))) as url:
            slow = {"stream": True, "messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}]}
            with httpx.stream("POST", url + "/v1/chat/completions", json=slow) as resp:
                assert resp.status_code == 200
                next(resp.iter_lines())  # the first event, then hang up
            deadline = time.monotonic() + 10
            while httpx.get(url + "/healthz").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert httpx.get(url + "/healthz").json()["in_flight"] == 0
            assert httpx.post(url + "/ask", json={"question": "더스크 피로도"}).status_code == 200


@pytest.mark.slow
def test_burst_of_streams_is_served_or_refused_never_hung(backends):
    """100 simultaneous streaming requests at 16 slots: each ends in [DONE] or a 429 with Retry-After."""
    from dnfbot.bench.loadgen import run_burst

    with ServerThread(create_app(backends, limits=Limits(max_concurrent=16))) as url:
        result = asyncio.run(
            run_burst(url, ["더스크 피로도 얼마나 들어?", "무의 장막 신수 추천"], 100, None, 60)
        )
        assert result["hung"] == 0 and result["failed"] == 0, result["failure_examples"]
        assert result["served"] + result["refused_429"] == 100 and result["served"] >= 16
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0


def test_bench_load_generator_and_report(backends, tmp_path):
    """`dnfbot bench serve`'s pieces: the closed-loop /ask client and the benchmarks.md section it writes."""
    from dnfbot.bench.loadgen import run_ask, run_ttft
    from dnfbot.bench.serve import TARGET_RPS, http_stack, to_markdown

    with ServerThread(create_app(backends)) as url:
        questions = ["더스크 피로도 얼마나 들어?", "오늘 서울 날씨 어때?"]
        ask = asyncio.run(run_ask(url, questions, 1.0, 2, None))
        ttft = asyncio.run(run_ttft(url, questions, 4, None))
    assert ask["requests"] == ask["ok"] > 0 and ask["errors"] == 0 and ask["statuses"] == {"200": ask["ok"]}
    assert 0 < ask["answered"] < ask["ok"]  # one of the two questions is answered, the other refused
    assert ttft["ok"] == 4 and ttft["ttft"]["p50_ms"] is not None
    burst = {"clients": 3, "served": 2, "refused_429": 1, "hung": 0, "failed": 0}
    result = {
        "command": "dnfbot bench serve", "questions": 2, "max_concurrent": 32, "cpu_threads": 2, "workers": 1,
        "http_stack": http_stack(), "warm_s": 0.1, "ask": ask, "ttft": ttft, "burst": burst,
        "loadavg_before": "n/a", "loadavg_after": "n/a", "server_cpu_cores": None, "alive_after_burst": True,
        "targets": {"rps": ask["rps"] >= TARGET_RPS, "p95": True, "errors": True, "burst": True},
    }  # fmt: skip
    md = to_markdown(result)
    assert md.startswith("## Serving") and "2 served to [DONE], 1 refused 429" in md and "uvicorn" in md
