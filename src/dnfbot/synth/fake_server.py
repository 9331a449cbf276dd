"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests and `dnfbot bench synth`.

No model and no dependencies: a small HTTP/1.1 server (keep-alive) on asyncio streams that answers
POST /v1/chat/completions with a well-formed 질문/장문/중문/단문 reply built from the prompt's subject, after
`latency` seconds. A marker in the prompt scripts a passage's behaviour, per distinct prompt:

    [[fake:ok]]            well-formed reply (the default)
    [[fake:malformed]]     always a reply in the wrong format
    [[fake:malformed-once]] wrong format on the first request, then well-formed
    [[fake:short-long]]    always a long answer of 2 sentences (fails validation)
    [[fake:429-once]]      HTTP 429 with Retry-After (seconds: `retry_after`) first, then well-formed
    [[fake:500-once]]      HTTP 500 first, then well-formed
    [[fake:500-always]]    HTTP 500 every time
    [[fake:slow-once]]     first reply only after `slow` seconds (past a client's timeout), then well-formed
    [[fake:hang]]          never answers

Every reply reports usage {prompt_tokens: 100, completion_tokens: 50} (fixed, so tests can assert sums).
`requests` logs (monotonic time, marker, status) for every request received.

Run standalone: python -m dnfbot.synth.fake_server --latency-ms 20  (prints "READY <base_url>").
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

PROMPT_TOKENS, COMPLETION_TOKENS = 100, 50
_MARK = re.compile(r"\[\[fake:([a-z0-9-]+)\]\]")
_SUBJECT = re.compile(r"다음 내용은 (.+?)에 관한 내용입니다")

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


class FakeChatServer:
    def __init__(
        self,
        latency: float = 0.0,
        *,
        retry_after: float = 1.0,
        slow: float = 5.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.latency, self.retry_after, self.slow = latency, retry_after, slow
        self.host, self.port = host, port
        self.requests: list[tuple[float, str, int]] = []
        self.auth_headers: set[str] = set()
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

    def start(self) -> FakeChatServer:
        """Serve from a background thread; returns self once listening."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-chat-server", daemon=True)
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

    def __enter__(self) -> FakeChatServer:
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
                data = json.dumps(payload, ensure_ascii=False).encode()
                head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "content-type: application/json"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                head.append(f"content-length: {len(data)}")
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, body: bytes):
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}
        if "authorization" in headers:
            self.auth_headers.add(headers["authorization"])
        req = json.loads(body or b"{}")
        text = "\n".join(str(m.get("content", "")) for m in req.get("messages", []))
        mark = (_MARK.search(text) or [None, "ok"])[1]
        subject = (_SUBJECT.search(text) or [None, "이 글"])[1]
        key = hashlib.sha1(text.encode()).hexdigest()
        n = self._attempts[key] = self._attempts.get(key, 0) + 1
        status, extra, payload = await self._script(mark, n, subject, req)
        self.requests.append((time.monotonic(), mark, status))
        return status, extra, payload

    async def _script(self, mark: str, n: int, subject: str, req: dict):
        if mark == "hang":
            await asyncio.sleep(3600)
        if mark == "slow-once" and n == 1:
            await asyncio.sleep(self.slow)
        if self.latency:
            await asyncio.sleep(self.latency)
        if mark == "429-once" and n == 1:
            err = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
            return 429, {"retry-after": f"{self.retry_after:g}"}, err
        if mark == "500-always" or (mark == "500-once" and n == 1):
            return 500, {}, {"error": {"message": "internal error", "type": "server_error"}}
        if mark == "malformed" or (mark == "malformed-once" and n == 1):
            content = malformed_reply(subject)
        elif mark == "short-long":
            content = short_long_reply(subject)
        else:
            content = good_reply(subject)
        return 200, {}, _completion(req.get("model", "fake"), content)


_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--slow", type=float, default=5.0)
    args = ap.parse_args(argv)
    server = FakeChatServer(
        args.latency_ms / 1000, retry_after=args.retry_after, slow=args.slow, port=args.port
    )

    async def serve() -> None:
        await server.start_async()
        print(f"READY {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
