"""The API's gate, one pure ASGI middleware in front of the app: bearer key, body size and requests in flight are
decided before any body is read.

Outermost first: bearer key ($DNFBOT_API_KEY, constant-time compare) → 401; body size (content-length, or counted
as a chunked body arrives) → 413; in-flight requests → 429 + Retry-After. /healthz passes without key or slot.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from dnfbot.errors import InputError
from dnfbot.options import option

OPEN_PATHS = ("/healthz",)  # no key, no slot


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    """OpenAI's error shape, so OpenAI clients surface our messages."""
    return {"error": {"message": message, "type": kind, "code": code}}


@dataclass
class Limits:
    panel = "Limits"
    max_body_bytes: int = option(64 * 1024, "larger bodies get 413")
    max_tokens: int = option(4096, "largest max_tokens a request may ask")
    max_concurrent: int = option(
        32, "requests in flight per worker (a stream holds its slot until it ends); more get 429"
    )
    retry_after_s: int = option(1, "the Retry-After of a 429")
    # under the GIL more threads only interleave the same work (see serve/app.py)
    cpu_threads: int = option(2, "threads for retrieval and extractive answers (about the cores)")

    def validate(self) -> None:
        if self.max_body_bytes < 1024 or min(self.max_tokens, self.max_concurrent, self.cpu_threads) < 1:
            raise InputError(
                "--max-body-bytes must be >= 1024; --max-tokens, --max-concurrent, --cpu-threads >= 1"
            )


@dataclass
class Gauge:
    in_flight: int = 0  # requests holding a slot; touched only on the event-loop thread


class Guard:
    """Pure ASGI middleware: key, body size and concurrency, decided before the app reads anything."""

    def __init__(
        self, app, api_key: str | None = None, limits: Limits | None = None, gauge: Gauge | None = None
    ):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.limits = limits or Limits()
        self.gauge = gauge or Gauge()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and not self._authorised(headers.get(b"authorization", b"")):
            return await send_json(
                send,
                401,
                error_body("missing or wrong API key", "authentication_error", "invalid_api_key"),
                [(b"www-authenticate", b"Bearer")],
            )
        limit = self.limits.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await send_json(
                send, 413, error_body(f"request body over {limit} bytes", code="too_large")
            )
        if self.gauge.in_flight >= self.limits.max_concurrent:
            retry = str(self.limits.retry_after_s).encode()
            return await send_json(
                send,
                429,
                error_body("server busy, retry shortly", "rate_limit_error", "busy"),
                [(b"retry-after", retry)],
            )
        self.gauge.in_flight += 1
        state = {"seen": 0, "started": False, "refused": False}

        async def counting_receive():  # chunked bodies have no content-length: count as they arrive
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > limit and not state["started"]:
                    state["refused"] = True
                    await send_json(
                        send, 413, error_body(f"request body over {limit} bytes", code="too_large")
                    )
                    return {"type": "http.disconnect"}  # the app stops reading; its reply is dropped below
            return msg

        async def tracking_send(msg):
            if state["refused"]:
                return
            state["started"] = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not state["refused"]:
                raise
        finally:
            self.gauge.in_flight -= 1

    def _authorised(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


async def send_json(send, status: int, body: dict, extra_headers=()) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
