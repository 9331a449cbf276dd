"""The API's gate, one pure ASGI middleware in front of the app: host, origin, bearer key, body and requests in
flight are decided before the app sees anything.

Outermost first: Host header (when bound to loopback: loopback names or --allowed-hosts, against DNS rebinding)
→ 421; Origin (a browser page's cross-origin request: only the --cors-origins) → 403; bearer key
($DNFBOT_API_KEY, constant-time compare) → 401; body size (content-length, or counted as a chunked body arrives)
→ 413; the whole body within --body-timeout-s → 408 (a slow or stalled client holds no slot while it sends);
then in-flight requests → 429 + Retry-After. /healthz passes without key or slot. A client that goes away
before its body is in is one log line, not a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from dataclasses import dataclass

import anyio

from dnfbot.errors import InputError
from dnfbot.options import option

OPEN_PATHS = ("/healthz",)  # no key, no slot
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
log = logging.getLogger("dnfbot.serve")


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
    body_timeout_s: float = option(10.0, "seconds a client may take to send its whole body; slower gets 408")
    max_connections: int = option(
        1024, "open connections per worker (uvicorn's limit_concurrency); more get 503"
    )
    keep_alive_s: int = option(5, "seconds an idle keep-alive connection stays open")
    allowed_hosts: str = option(
        "", "comma-separated Host names accepted besides localhost when bound to loopback (a proxy's name)"
    )
    cors_origins: str = option("", "comma-separated browser origins allowed to call the API (default: none)")

    def validate(self) -> None:
        if self.max_body_bytes < 1024 or min(self.max_tokens, self.max_concurrent, self.cpu_threads) < 1:
            raise InputError(
                "--max-body-bytes must be >= 1024; --max-tokens, --max-concurrent, --cpu-threads >= 1"
            )
        if not (math.isfinite(self.body_timeout_s) and self.body_timeout_s > 0):
            raise InputError("--body-timeout-s must be a positive number of seconds")
        if self.max_connections < self.max_concurrent or self.keep_alive_s < 1:
            raise InputError("--max-connections must be >= --max-concurrent; --keep-alive-s >= 1")

    def uvicorn_options(self) -> dict:
        """The server-side limits uvicorn enforces itself."""
        return {"limit_concurrency": self.max_connections, "timeout_keep_alive": self.keep_alive_s}


@dataclass
class Gauge:
    in_flight: int = 0  # requests holding a slot; touched only on the event-loop thread


class Guard:
    """Pure ASGI middleware: host, origin, key, body and concurrency, decided before the app reads anything."""

    def __init__(
        self, app, api_key: str | None = None, limits: Limits | None = None, gauge: Gauge | None = None
    ):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.limits = limits or Limits()
        self.gauge = gauge or Gauge()
        self.hosts = {*LOOPBACK_NAMES, *_names(self.limits.allowed_hosts)}
        self.origins = {o.rstrip("/") for o in _names(self.limits.cors_origins)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not self._host_ok(scope, headers.get(b"host", b"").decode("latin-1")):
            return await send_json(send, 421, error_body("Host header not served here", code="bad_host"))
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        cors = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")] if origin else []
        if origin and origin not in self.origins:  # a page elsewhere (or a rebinding attack) calling us
            return await send_json(send, 403, error_body(f"origin {origin} not allowed", code="bad_origin"))
        if scope["method"] == "OPTIONS" and origin:  # CORS preflight of an allowed origin
            allow = [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                     (b"access-control-allow-headers", b"authorization, content-type"),
                     (b"access-control-max-age", b"600")]  # fmt: skip
            return await send_json(send, 204, None, cors + allow)
        send = _with_headers(send, cors) if cors else send
        if scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
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
        # The whole body before a slot: a client that sends slowly (or stops) ties up a connection, not the app.
        chunks, seen = [], 0
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        log.info("client went away before its request body was in (%s)", scope["path"])
                        return
                    body = msg.get("body", b"")
                    seen += len(body)
                    if seen > limit:  # chunked bodies have no content-length: counted as they arrive
                        return await send_json(
                            send, 413, error_body(f"request body over {limit} bytes", code="too_large")
                        )
                    chunks.append(body)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            t = self.limits.body_timeout_s
            return await send_json(
                send, 408, error_body(f"request body not received within {t:g} s", code="timeout"),
                [(b"connection", b"close")],
            )  # fmt: skip
        if self.gauge.in_flight >= self.limits.max_concurrent:
            retry = str(self.limits.retry_after_s).encode()
            return await send_json(
                send,
                429,
                error_body("server busy, retry shortly", "rate_limit_error", "busy"),
                [(b"retry-after", retry)],
            )
        self.gauge.in_flight += 1
        replayed = False

        async def replay():  # the body as one message, then the real channel (the app waits on it for disconnect)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send)
        finally:
            self.gauge.in_flight -= 1

    def _host_ok(self, scope, host: str) -> bool:
        # Bound to loopback, only this machine's names are ours: a page whose DNS name was rebound to 127.0.0.1
        # sends its own name. Bound elsewhere, any Host (the operator chose to expose it).
        from dnfbot.generate.endpoints import is_loopback

        server = scope.get("server")
        if not server or not is_loopback(str(server[0])):
            return True
        name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return name.lower() in self.hosts

    def _authorised(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


def _names(text: str) -> list[str]:
    return [n.strip().lower() if "://" not in n else n.strip() for n in text.split(",") if n.strip()]


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    async def sending(msg):
        if msg["type"] == "http.response.start":
            msg = dict(msg, headers=[*msg.get("headers", []), *extra])
        await send(msg)

    return sending


async def send_json(send, status: int, body: dict | None, extra_headers=()) -> None:
    data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
