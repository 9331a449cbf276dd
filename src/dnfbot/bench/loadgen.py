"""A small HTTP/1.1 load generator for `dnfbot bench serve`, run as its own process.

    python -m dnfbot.bench.loadgen ask    --url URL --questions q.txt --duration 60 --concurrency 16
    python -m dnfbot.bench.loadgen ttft   --url URL --questions q.txt --requests 50
    python -m dnfbot.bench.loadgen burst  --url URL --questions q.txt --clients 200

A server started with DNFBOT_API_KEY is asked with the same key, read from the environment (never a flag).

Raw asyncio streams with keep-alive connections, so the client costs a few µs per request and the numbers are
the server's. Prints one JSON object with the measurements on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlparse

from dnfbot.eval.metrics import latency_ms


class HTTPError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int, key: str | None = None):
        self.host, self.port, self.key = host, port, key
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def send(self, path: str, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    async def chunks(self, headers: dict[str, str]):
        """The body, piece by piece as it arrives (chunked or content-length)."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        else:
            n = int(headers.get("content-length", "0"))
            if n:
                yield await self.reader.readexactly(n)

    async def body(self, headers: dict[str, str]) -> bytes:
        return b"".join([c async for c in self.chunks(headers)])


def target(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 80


def percentiles(seconds: list[float]) -> dict:
    return latency_ms(seconds, (50, 95, 99), digits=2, with_max=True)


async def run_ask(url: str, questions: list[str], duration: float, concurrency: int, key: str | None) -> dict:
    """Closed loop: `concurrency` clients, each asking its next question as soon as the last answer arrives."""
    host, port = target(url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    answered = 0
    deadline = time.perf_counter() + duration

    async def client(i: int) -> None:
        nonlocal answered
        conn, n = Conn(host, port, key), i
        await conn.open()
        try:
            while time.perf_counter() < deadline:
                q = questions[n % len(questions)]
                n += concurrency
                t = time.perf_counter()
                try:
                    await conn.send("/ask", {"question": q})
                    status, headers = await conn.head()
                    body = await conn.body(headers)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    await conn.open()
                    continue
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200 and json.loads(body)["answered"]:
                    answered += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = statuses.get(200, 0)
    return {
        "requests": len(latencies),
        "ok": ok,
        "answered": answered,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": len(errors) + len(latencies) - ok,
        "error_examples": errors[:5],
        "seconds": round(wall, 2),
        "rps": round(ok / wall, 1),
        "concurrency": concurrency,
        **percentiles(latencies),
    }


async def _stream_once(host: str, port: int, question: str, key: str | None, timeout: float) -> dict:
    """One streaming chat completion: status, time to first content token, total time, clean end."""
    conn = Conn(host, port, key)
    t = time.perf_counter()
    out = {"status": None, "ttft": None, "total": None, "done": False, "retry_after": None, "error": None}
    try:
        async with asyncio.timeout(timeout):
            await conn.open()
            body = {"model": "dnfbot", "stream": True, "messages": [{"role": "user", "content": question}]}
            await conn.send("/v1/chat/completions", body)
            status, headers = await conn.head()
            out["status"], out["retry_after"] = status, headers.get("retry-after")
            buf = b""
            async for piece in conn.chunks(headers):
                if status != 200:
                    continue
                buf += piece
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    data = event.decode().removeprefix("data: ")
                    if data == "[DONE]":
                        out["done"] = True
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        out["error"] = obj["error"].get("message")
                    elif out["ttft"] is None and obj["choices"][0]["delta"].get("content"):
                        out["ttft"] = time.perf_counter() - t
            out["total"] = time.perf_counter() - t
    except TimeoutError:
        out["error"] = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return out


async def run_ttft(url: str, questions: list[str], requests: int, key: str | None) -> dict:
    """Sequential streaming requests on an idle server: time to first token and to the end of the stream."""
    host, port = target(url)
    results = [
        await _stream_once(host, port, questions[i % len(questions)], key, 60) for i in range(requests)
    ]
    ok = [r for r in results if r["status"] == 200 and r["done"] and not r["error"]]
    return {
        "requests": requests,
        "ok": len(ok),
        "ttft": percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
        "total": percentiles([r["total"] for r in ok]),
    }


async def run_burst(url: str, questions: list[str], clients: int, key: str | None, timeout: float) -> dict:
    """`clients` streaming requests at once: each must be served to [DONE] or refused with 429 + Retry-After."""
    host, port = target(url)
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(_stream_once(host, port, questions[i % len(questions)], key, timeout) for i in range(clients))
    )
    served = [r for r in results if r["status"] == 200 and r["done"] and not r["error"]]
    refused = [r for r in results if r["status"] == 429 and r["retry_after"]]
    hung = [r for r in results if r["error"] == "timeout"]
    other = len(results) - len(served) - len(refused) - len(hung)
    return {
        "clients": clients,
        "served": len(served),
        "refused_429": len(refused),
        "hung": len(hung),
        "failed": other,
        "failure_examples": [r for r in results if r not in served and r not in refused][:5],
        "seconds": round(time.perf_counter() - t0, 2),
        "served_total": percentiles([r["total"] for r in served]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dnfbot.bench.loadgen")
    p.add_argument("mode", choices=["ask", "ttft", "burst"])
    p.add_argument("--url", required=True)
    p.add_argument("--questions", required=True, help="text file, one question per line")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    key = os.environ.get("DNFBOT_API_KEY") or None
    with open(a.questions, encoding="utf-8") as f:
        questions = [line.strip() for line in f if line.strip()]
    if a.mode == "ask":
        result = asyncio.run(run_ask(a.url, questions, a.duration, a.concurrency, key))
    elif a.mode == "ttft":
        result = asyncio.run(run_ttft(a.url, questions, a.requests, key))
    else:
        result = asyncio.run(run_burst(a.url, questions, a.clients, key, a.timeout))
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
