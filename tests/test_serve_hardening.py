"""The API against hostile or broken clients, over real sockets (uvicorn in a thread): slow and stalled bodies,
clients that hang up, oversize questions, foreign Host and Origin headers, too many connections."""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx

from dnfbot.errors import InputError
from dnfbot.serve.app import create_app
from dnfbot.serve.backends import open_backends
from dnfbot.serve.guard import Limits
from dnfbot.serve.run import ServerThread
from dnfbot.serve.schemas import MAX_QUESTION_CHARS
from support.guide_index import mini_index

ASK = {"question": "더스크 피로도 얼마나 들어?"}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return mini_index(tmp_path_factory.mktemp("serve_hard"))


@pytest.fixture(scope="module")
def backends(index_dir):
    return open_backends(index_dir)


def slow_client(url: str, body_bytes: int = 1000) -> socket.socket:
    """Headers announcing a body, then one byte of it — and nothing more."""
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    head = (
        f"POST /ask HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\ncontent-type: application/json\r\n"
        f"content-length: {body_bytes}\r\n\r\n{{"
    )
    s.sendall(head.encode())
    return s


def test_slow_body_clients_hold_no_slot_and_get_408(backends, caplog):
    """40 clients stalled mid-body at 8 slots: normal /ask requests are all answered meanwhile, the stalled ones
    get 408 after the body timeout, and the server answers at once after they leave — no traceback logged."""
    limits = Limits(max_concurrent=8, body_timeout_s=2.0)
    with (
        caplog.at_level(logging.INFO, logger="dnfbot.serve"),
        ServerThread(create_app(backends, limits=limits)) as url,
    ):
        slow = [slow_client(url) for _ in range(40)]
        time.sleep(0.3)
        with ThreadPoolExecutor(6) as pool:  # fewer than the 8 slots: any 429 would be the slow clients
            codes = list(
                pool.map(lambda _: httpx.post(url + "/ask", json=ASK, timeout=30).status_code, range(20))
            )
        assert codes == [200] * 20, codes
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0
        time.sleep(2.5)
        first = slow[0].recv(4096).decode("latin-1")
        assert first.startswith("HTTP/1.1 408") and "not received within 2 s" in first
        for s in slow:
            s.close()
        t = time.monotonic()
        assert httpx.post(url + "/ask", json=ASK, timeout=5).status_code == 200 and time.monotonic() - t < 10
    assert not [r for r in caplog.records if r.exc_info], "a client's fault was logged as a crash"


def test_client_hanging_up_mid_body_is_one_line(backends, caplog):
    with caplog.at_level(logging.INFO, logger="dnfbot.serve"), ServerThread(create_app(backends)) as url:
        for _ in range(5):
            slow_client(url).close()
        time.sleep(0.5)
        assert httpx.post(url + "/ask", json=ASK).status_code == 200
        assert httpx.get(url + "/healthz").json()["in_flight"] == 0
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert gone and not [r for r in caplog.records if r.exc_info]


def test_question_length_is_limited(backends):
    with ServerThread(create_app(backends, limits=Limits(max_body_bytes=1 << 20))) as url:
        long_q = "장막 " * (MAX_QUESTION_CHARS // 3 + 1)
        r = httpx.post(url + "/ask", json={"question": long_q})
        assert r.status_code == 422 and "question" in r.json()["error"]["message"]
        r = httpx.post(url + "/search", json={"question": long_q})
        assert r.status_code == 422
        chat = {"messages": [{"role": "user", "content": long_q}]}
        r = httpx.post(url + "/v1/chat/completions", json=chat)
        assert r.status_code == 422 and "over 4000 characters" in r.json()["error"]["message"]
        ok = {"messages": [{"role": "user", "content": ASK["question"]}]}
        assert httpx.post(url + "/v1/chat/completions", json=ok).status_code == 200


def test_foreign_host_and_origin_are_refused_on_loopback(backends):
    """DNS rebinding (a page's own name resolving to 127.0.0.1) and cross-origin form posts get nothing."""
    limits = Limits(allowed_hosts="api.example.org", cors_origins="https://chat.example.org")
    with ServerThread(create_app(backends, limits=limits)) as url:
        port = urlparse(url).port
        assert httpx.post(url + "/ask", json=ASK).status_code == 200  # Host 127.0.0.1:PORT
        for host in (f"localhost:{port}", "api.example.org", f"[::1]:{port}"):
            assert httpx.post(url + "/ask", json=ASK, headers={"host": host}).status_code == 200, host
        r = httpx.post(url + "/ask", json=ASK, headers={"host": f"evil.example.com:{port}"})
        assert r.status_code == 421 and r.json()["error"]["code"] == "bad_host"
        # a text/plain POST from a page elsewhere (no preflight in a browser): refused before it runs
        evil = {"origin": "https://evil.example.com", "content-type": "text/plain"}
        r = httpx.post(url + "/ask", content=b'{"question": "x"}', headers=evil)
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_origin"
        good = {"origin": "https://chat.example.org"}
        r = httpx.post(url + "/ask", json=ASK, headers=good)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://chat.example.org"
        r = httpx.options(url + "/ask", headers={**good, "access-control-request-method": "POST"})
        assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]


def test_connection_limit_and_keep_alive_reach_uvicorn(backends):
    app = create_app(backends, limits=Limits(max_concurrent=2, max_connections=4, keep_alive_s=1))
    server = ServerThread(app)
    assert server.server.config.limit_concurrency == 4 and server.server.config.timeout_keep_alive == 1
    with server as url:
        u = urlparse(url)
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle past keep-alive: the server closes the connection
        assert s.recv(1) == b""
        held = [socket.create_connection((u.hostname, u.port), timeout=10) for _ in range(4)]
        time.sleep(0.3)
        assert httpx.post(url + "/ask", json=ASK).status_code == 503  # over the connection limit
        for h in held:
            h.close()
        time.sleep(0.3)
        assert httpx.post(url + "/ask", json=ASK).status_code == 200


def test_limits_are_checked():
    for bad in (
        {"body_timeout_s": 0},
        {"body_timeout_s": float("nan")},
        {"max_connections": 4, "max_concurrent": 8},
        {"keep_alive_s": 0},
    ):
        with pytest.raises(InputError):
            Limits(**bad).validate()


def test_bench_serve_hostile_runs_a_real_server(index_dir):
    """`dnfbot bench serve-hostile`'s measurement on the mini index, small: all answered, no traceback."""
    from dnfbot.bench.serve_hostile import HostileServeBench

    r = HostileServeBench(slow_clients=6, normal=3, rounds=1, index_dir=index_dir).run()
    assert r["loaded"]["ok"] == r["loaded"]["requests"] == 3 and r["after"]["status"] == 200
    assert r["server_tracebacks"] == 0 and "| with 6 slow-body clients | 3/3 |" in r["markdown"]


def test_routing_errors_are_openai_error_objects_and_head_health_works(backends):
    with ServerThread(create_app(backends)) as url:
        r = httpx.get(url + "/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = httpx.get(url + "/ask")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert "POST" in r.headers["allow"]
        assert httpx.head(url + "/healthz").status_code == 200
