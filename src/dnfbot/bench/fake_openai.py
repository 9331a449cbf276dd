"""A scripted OpenAI-compatible chat server on 127.0.0.1 — no model — for `dnfbot bench synth` and the tests.

    python -m dnfbot.bench.fake_openai --latency-ms 20      # prints "READY <base_url>"
    with FakeOpenAI() as fake: ... fake.base_url ...       # in a background thread

A small HTTP/1.1 server (keep-alive) on asyncio streams. POST /v1/chat/completions, streaming (server-sent events)
or not, answers from the prompt it was given, so a caller can see that its prompt arrived intact:
- a RAG prompt (a `<document index=… title="…">` block in the last user message, see generate/prompting.py) gets
  "<title> 공략에 따르면 …" from the first document, or NO_INFO_ANSWER when the context block is empty;
- any other prompt (the `synth qa` template) gets a well-formed 질문/장문/중문/단문 reply about its subject.
A marker in the prompt scripts the behaviour, per distinct prompt:

    [[fake:ok]]             the reply above (the default)
    [[fake:malformed]]      always a reply in the wrong format
    [[fake:malformed-once]] wrong format on the first request, then well-formed
    [[fake:short-long]]     always a long answer of 2 sentences (fails validation)
    [[fake:429-once]]       HTTP 429 with Retry-After (seconds: `retry_after`) first, then well-formed
    [[fake:500-once]]       HTTP 500 first, then well-formed
    [[fake:500-always]]     HTTP 500 every time
    [[fake:slow-once]]      first reply only after `slow` seconds (past a client's timeout), then well-formed
    [[fake:hang]]           never answers
    [[fake:empty-once]]     HTTP 200 with an empty completion first, then well-formed
    [[fake:no-choices-once]] HTTP 200 with a JSON object that has no choices first, then well-formed
    [[fake:not-json-once]]  HTTP 200 with an HTML body (a proxy's page) first, then well-formed
    [[fake:not-json-always]] HTTP 200 with an HTML body every time

Attributes a test may change while it runs: `status` (not 200: every chat request fails with it), `latency`
(seconds before each reply), `token_delay_s` (pause after each streamed token). With `api_key` set, a request
without `Authorization: Bearer <key>` gets 401. Every reply reports usage {prompt_tokens: 100, completion_tokens:
50} (fixed, so tests can assert sums), and every chat request is kept in `requests`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
from typing import NamedTuple

from dnfbot import NO_INFO_ANSWER
from dnfbot.generate.prompting import NO_CONTEXT

PROMPT_TOKENS, COMPLETION_TOKENS = 100, 50
_MARK = re.compile(r"\[\[fake:([a-z0-9-]+)\]\]")
_SUBJECT = re.compile(r"다음 내용은 (.+?)에 관한 내용입니다")
_TITLE = re.compile(r'<document index="\d+" title="([^"]*)">')

LONG = (
    "이 글은 던전앤파이터 공략 내용을 다룹니다. 먼저 입장 조건을 확인해야 합니다. "
    "다음으로 파티 구성을 준비합니다. 보스의 패턴을 미리 익혀 두면 좋습니다. "
    "마지막으로 보상을 확인하고 정리합니다."
)
MEDIUM = "입장 조건과 파티 구성을 먼저 확인합니다. 보스 패턴을 익혀 두면 좋습니다."
SHORT = "입장 조건을 확인하고 보스 패턴을 익히면 됩니다."


def good_reply(subject: str) -> str:
    return f"질문: {subject}에 대해 알려주세요.\n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: {SHORT}"


def malformed_reply(subject: str) -> str:
    return f"{subject}에 대한 질문과 답변입니다. 형식을 지키지 않은 답입니다."


def short_long_reply(subject: str) -> str:
    return (
        f"질문: {subject}에 대해 알려주세요.\n###\n장문: 두 문장뿐입니다. 너무 짧습니다.\n###\n"
        f"중문: {MEDIUM}\n###\n단문: {SHORT}"
    )


def rag_reply(user: str) -> str | None:
    """The answer to a RAG prompt, grounded in its first document; None when the prompt is not one."""
    m = _TITLE.search(user)
    if NO_CONTEXT in user:
        return NO_INFO_ANSWER
    return None if m is None else f"{m.group(1)} 공략에 따르면 이렇게 하시면 됩니다."


class Request(NamedTuple):
    time: float  # monotonic
    mark: str
    status: int
    body: dict
    authorization: str | None


class FakeOpenAI:
    def __init__(
        self,
        latency: float = 0.0,
        *,
        retry_after: float = 1.0,
        slow: float = 5.0,
        api_key: str | None = None,
        token_delay_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.latency, self.retry_after, self.slow = latency, retry_after, slow
        self.api_key, self.token_delay_s, self.status = api_key, token_delay_s, 200
        self.host, self.port = host, port
        self.requests: list[Request] = []
        self._attempts: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start_async(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> FakeOpenAI:
        """Serve from a background thread; returns self once listening."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path = line.decode("latin-1").split(" ")[:2]
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, extra, payload = await self._route(method, path, headers, body)
                if isinstance(payload, list):  # a stream of server-sent events
                    await self._send_events(writer, payload)
                    continue
                raw = isinstance(payload, bytes)  # a body that is not JSON (what a misconfigured proxy sends)
                data = payload if raw else json.dumps(payload, ensure_ascii=False).encode()
                ctype = "text/html; charset=utf-8" if raw else "application/json"
                head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", f"content-type: {ctype}"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                head.append(f"content-length: {len(data)}")
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            pass  # the client went away (mid-stream too), or the server is stopping
        finally:
            self._conns.discard(task)
            writer.close()

    async def _send_events(self, writer: asyncio.StreamWriter, events: list[str]) -> None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(head.encode())
        for event in events:
            data = f"data: {event}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
            if self.token_delay_s and '"content": "' in event:
                await asyncio.sleep(self.token_delay_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _route(self, method: str, path: str, headers: dict, body: bytes):
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}
        req = json.loads(body or b"{}")
        messages = req.get("messages") or []
        text = "\n".join(str(m.get("content", "")) for m in messages)
        mark = (_MARK.search(text) or [None, "ok"])[1]
        auth = headers.get("authorization")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            status, extra, payload = 401, {}, _error("Incorrect API key provided", "auth")
        elif self.status != 200:
            status, extra, payload = self.status, {}, _error("the model crashed", "server_error")
        else:
            key = hashlib.sha1(text.encode()).hexdigest()
            n = self._attempts[key] = self._attempts.get(key, 0) + 1
            status, extra, payload = await self._script(mark, n, messages, req)
        self.requests.append(Request(time.monotonic(), mark, status, req, auth))
        return status, extra, payload

    async def _script(self, mark: str, n: int, messages: list[dict], req: dict):
        if mark == "hang":
            await asyncio.sleep(3600)
        if mark == "slow-once" and n == 1:
            await asyncio.sleep(self.slow)
        if self.latency:
            await asyncio.sleep(self.latency)
        if mark == "429-once" and n == 1:
            return (
                429,
                {"retry-after": f"{self.retry_after:g}"},
                _error("Rate limit reached", "rate_limit_exceeded"),
            )
        if mark == "500-always" or (mark == "500-once" and n == 1):
            return 500, {}, _error("internal error", "server_error")
        if mark == "not-json-always" or (mark == "not-json-once" and n == 1):
            return 200, {}, b"<html><body>502 Bad Gateway (a proxy's page)</body></html>"
        if mark == "no-choices-once" and n == 1:
            return 200, {}, {"id": "chatcmpl-fake", "object": "chat.completion", "choices": []}
        user = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        subject = (_SUBJECT.search(user) or [None, "이 글"])[1]
        content = rag_reply(user)
        if content is None and (mark == "malformed" or (mark == "malformed-once" and n == 1)):
            content = malformed_reply(subject)
        elif content is None:
            content = short_long_reply(subject) if mark == "short-long" else good_reply(subject)
        if mark == "empty-once" and n == 1:
            content = ""
        model = req.get("model", "fake-model")
        if req.get("stream"):
            return 200, {}, _events(model, content)
        return 200, {}, _completion(model, content)


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    }


def _events(model: str, content: str) -> list[str]:
    """The streamed reply: a role chunk, one chunk per word (with its trailing space), a stop chunk, [DONE]."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        c = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return json.dumps(c, ensure_ascii=False)

    words = re.findall(r"\S+\s*", content)
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": w}) for w in words),
        chunk({}, "stop"),
        "[DONE]",
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m dnfbot.bench.fake_openai", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--slow", type=float, default=5.0)
    args = ap.parse_args(argv)
    server = FakeOpenAI(args.latency_ms / 1000, retry_after=args.retry_after, slow=args.slow, port=args.port)

    async def serve() -> None:
        await server.start_async()
        print(f"READY {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
