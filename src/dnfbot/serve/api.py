"""The HTTP API: OpenAI-compatible chat completions over the guide RAG, plus /ask, /search, /healthz.

    POST /v1/chat/completions  OpenAI schema; `stream: true` → server-sent events ending in `data: [DONE]`.
                               The last user message is the question, earlier turns the history. Extra fields:
                               request `dnfbot_filters` {category1,2,3}; response `dnfbot_sources`, `dnfbot_answered`.
    GET  /v1/models            one model per back end: dnfbot-extractive, dnfbot-hf / dnfbot-openai when configured
    POST /ask                  {"question", "category1..3", "history", "backend"} → what `dnfbot ask --json` prints
    POST /search               {"question", "k", "category1..3", "with_text"} → what `dnfbot search --json` prints
    GET  /healthz              liveness, back ends, index size (no key needed)
    POST /v1/feedback          {"answer_id", "rating": up|down, "correction", "comment"} (dnfbot/feedback/api.py)

Every answer is logged with its trace when the app has an answer log (dnfbot/feedback): `/ask` returns its
`answer_id`, a chat completion's `id` is `chatcmpl-<answer_id>`. Logging is queued, never waited for.

Guards, outermost first (one ASGI middleware, before any body is read): bearer key ($DNFBOT_API_KEY,
constant-time compare) → 401; body size → 413; in-flight requests → 429 + Retry-After. Validation: bad JSON →
400, bad fields or max_tokens over the limit → 422. RAG work runs in worker threads, so the event loop keeps
accepting (and refusing) connections while answers are computed. CPU-only work (retrieval, extractive answers) is
queued for `Limits.cpu_threads` threads: under the GIL, more threads only interleave the same work, so every
request would finish as late as the slowest; FIFO keeps latency close to the mean. Model back ends (hf, openai)
generate in the general pool and do not queue behind each other.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dnfbot import __version__
from dnfbot.conversation import split_messages
from dnfbot.errors import DnfbotError, InputError
from dnfbot.feedback.trace import Traced
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.retrieval.sparse import Filters
from dnfbot.serve.backends import Backends

log = logging.getLogger("dnfbot.serve")
SPEC_ENV = "DNFBOT_SERVE_SPEC"  # how `--workers N` hands the server options to its worker processes
MODEL_PREFIX = "dnfbot-"
OPEN_PATHS = ("/healthz",)  # no key, no slot


@dataclass
class Limits:
    max_body_bytes: int = 64 * 1024
    max_tokens: int = 4096  # largest max_tokens a request may ask for
    max_concurrent: int = 32  # requests in flight (a streaming one holds its slot until it ends)
    retry_after_s: int = 1
    cpu_threads: int = 2  # threads for retrieval + extractive answers (see the module docstring)


# --- request bodies -----------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Turn(_Body):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class FilterBody(_Body):
    category1: str | None = None
    category2: str | None = None
    category3: str | None = None

    def filters(self) -> Filters:
        return Filters(self.category1 or None, self.category2 or None, self.category3 or None)


class AskBody(FilterBody):
    question: str = Field(min_length=1)
    history: list[Turn] = Field(default_factory=list, max_length=100)
    backend: str | None = None


class SearchBody(FilterBody):
    question: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=100)
    with_text: bool = False


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many options we do not use

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int | None = Field(None, ge=1, le=1)
    dnfbot_filters: FilterBody | None = None


# --- helpers ------------------------------------------------------------------------------------------------
def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    """OpenAI's error shape, so OpenAI clients surface our messages."""
    return {"error": {"message": message, "type": kind, "code": code}}


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, headers=None
):
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def parse_body(request: Request, model: type[BaseModel]):
    """JSON body → model, whatever the content type says (curl -d sends form-encoded): 400 if it is not JSON,
    422 naming the first bad field otherwise."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        e = exc.errors()[0]
        if e.get("type") == "json_invalid":
            raise BadRequest(400, "request body is not valid JSON", "bad_json") from None
        where = ".".join(str(p) for p in e.get("loc", ())) or "body"
        raise BadRequest(422, f"{where}: {e.get('msg')}", "invalid_field") from None


class _Overrides(Generator):
    """Per-request max_tokens / temperature on a shared generator (the request object is per call)."""

    def __init__(self, inner: Generator, max_new_tokens: int | None, temperature: float | None):
        self.inner, self.name = inner, inner.name
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        if self.max_new_tokens is not None:
            request.max_new_tokens = self.max_new_tokens
        if self.temperature is not None:
            request.temperature = self.temperature
        return self.inner.stream(request)


def _with_overrides(rag, max_tokens: int | None, temperature: float | None):
    if max_tokens is None and temperature is None:
        return rag
    r = copy.copy(rag)  # shares the index; only the generator wrapper differs
    r.generator = _Overrides(rag.generator, max_tokens, temperature)
    return r


@dataclass
class Gauge:
    in_flight: int = 0  # requests holding a slot; touched only on the event-loop thread


class _Guard:
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
            return await _send_json(
                send,
                401,
                error_body("missing or wrong API key", "authentication_error", "invalid_api_key"),
                [(b"www-authenticate", b"Bearer")],
            )
        limit = self.limits.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_json(
                send, 413, error_body(f"request body over {limit} bytes", code="too_large")
            )
        if self.gauge.in_flight >= self.limits.max_concurrent:
            retry = str(self.limits.retry_after_s).encode()
            return await _send_json(
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
                    await _send_json(
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


async def _send_json(send, status: int, body: dict, extra_headers=()) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def _iterate(it: Iterator[str]) -> AsyncIterator[str]:
    """Pull a blocking token iterator in the thread pool; close it when the client goes away."""
    sentinel = object()
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, it, sentinel)
            if item is sentinel:
                return
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            # A generator still running in another thread refuses to close: it ends on its own.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(close)


# --- the app ------------------------------------------------------------------------------------------------
def create_app(
    backends: Backends,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    warm: bool = False,
    answer_log=None,
) -> FastAPI:
    """The API over already-opened back ends (the index is loaded once, never per request)."""
    limits = limits or Limits()
    gauge = Gauge()
    stop_warming = threading.Event()
    cpu: dict[str, anyio.CapacityLimiter] = {}

    async def lifespan(app: FastAPI):
        # Enough worker threads for every admitted request, so none queues behind the limiter.
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(40, limits.max_concurrent + 8)
        cpu["limiter"] = anyio.CapacityLimiter(limits.cpu_threads)
        if warm:
            threading.Thread(target=backends.warm, kwargs={"stop": stop_warming}, daemon=True).start()
        yield
        stop_warming.set()
        if answer_log is not None:
            await anyio.to_thread.run_sync(answer_log.close)  # write what is queued before the process ends

    app = FastAPI(title="dnfbot", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.backends = backends
    app.state.limits = limits

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "request body is not valid JSON", code="bad_json")
        e = errors[0]
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        return _error(422, f"{where}: {e.get('msg')}", code="invalid_field")

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        return _error(exc.status, exc.message, code=exc.code)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError):
        return _error(400, str(exc), code="bad_input")

    @app.exception_handler(DnfbotError)
    async def _upstream(request: Request, exc: DnfbotError):
        return _error(502, str(exc), "upstream_error", "generator_failed")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, "internal error", "server_error", "internal")

    async def on_cpu(fn, *args):
        """Run CPU-only work (retrieval, extractive answers) in the small FIFO pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=cpu["limiter"])

    async def answer_with(rag, *args):
        """rag.ask: in the CPU pool for the extractive back end, in the general pool for model back ends."""
        if rag.generator.name == "extractive":
            return await on_cpu(rag.ask, *args)
        return await anyio.to_thread.run_sync(rag.ask, *args)

    def _model_id(name: str) -> str:
        return MODEL_PREFIX + name

    def _resolve(model: str | None) -> str | None:
        if not model or model in ("dnfbot", "default"):
            return backends.default
        name = model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else model
        return name if name in backends.rags else None

    @app.get("/healthz")
    async def healthz():
        cache = backends.passage_cache()
        rag = backends.get(None)
        return {
            "status": "ok",
            "pid": os.getpid(),  # which worker answered, with --workers N
            "version": __version__,
            "backends": backends.names,
            "default": backends.default,
            "chunks": len(rag.index.chunks),
            "in_flight": gauge.in_flight,
            "max_concurrent": limits.max_concurrent,
            "warm": {"cached": len(cache), "passages": len(rag.index.chunks)},
        }

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": _model_id(n),
                    "object": "model",
                    "created": 0,
                    "owned_by": "dnfbot",
                    "dnfbot_generator": n,
                    "dnfbot_model": backends.models.get(n),
                }
                for n in backends.names
            ],
        }

    @app.post("/search")
    async def search(request: Request):
        body = await parse_body(request, SearchBody)
        rag = backends.get(None)

        def run():
            hits = rag.search(body.question, body.k, body.filters())
            return [dict(h.source(), text=h.chunk.text) if body.with_text else h.source() for h in hits]

        return JSONResponse({"question": body.question, "results": await on_cpu(run)})

    @app.post("/ask")
    async def ask(request: Request):
        body = await parse_body(request, AskBody)
        if body.backend is not None and body.backend not in backends.rags:
            return _error(
                422,
                f"backend: unknown '{body.backend}' (choose from {', '.join(backends.names)})",
                code="invalid_field",
            )
        rag = backends.get(body.backend)
        history = [t.model_dump() for t in body.history]
        traced = Traced(answer_log, rag, "api", history, body.filters())
        answer = await answer_with(traced.rag, body.question, body.filters(), history)
        out = answer.to_dict()
        if answer_log is not None:
            out["answer_id"] = traced.done(answer)
        return JSONResponse(out)  # plain JSON types: no jsonable_encoder pass

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse_body(request, ChatBody)
        name = _resolve(body.model)
        if name is None:
            known = ", ".join(_model_id(n) for n in backends.names)
            return _error(404, f"model '{body.model}' not found (available: {known})", code="model_not_found")
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > limits.max_tokens:
            return _error(422, f"max_tokens: at most {limits.max_tokens}", code="invalid_field")
        question, history = split_messages(body.messages)
        filters = body.dnfbot_filters.filters() if body.dnfbot_filters else Filters()
        rag = _with_overrides(backends.get(name), max_tokens, body.temperature)
        traced = Traced(answer_log, rag, "api", history, filters, answer_id=uuid.uuid4().hex)
        rag = traced.rag
        cid, created, model = f"chatcmpl-{traced.id or uuid.uuid4().hex[:24]}", int(time.time()), _model_id(name)
        if not body.stream:
            a = await answer_with(rag, question, filters, history)
            traced.done(a)
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": a.answer},
                        "finish_reason": "stop",
                    }
                ],
                "dnfbot_sources": a.sources,
                "dnfbot_answered": a.answered,
            }
        # Retrieval only: a generator's stream does no work until the first token is pulled.
        sources, tokens = await on_cpu(rag.ask_stream, question, filters, history)

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            return _sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            yield chunk(
                {"role": "assistant", "content": ""}, dnfbot_sources=sources, dnfbot_answered=bool(sources)
            )
            said: list[str] = []
            try:
                async for text in _iterate(tokens):
                    said.append(text)
                    yield chunk({"content": text})
            except DnfbotError as e:  # headers are gone: report in-band, as OpenAI does
                yield _sse(error_body(str(e), "upstream_error", "generator_failed"))
            except Exception:
                log.exception("stream failed")
                yield _sse(error_body("internal error", "server_error", "internal"))
            else:
                traced.done_stream(question, "".join(said))
                yield chunk({}, "stop")
            yield _sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    from dnfbot.feedback.api import install as install_feedback

    install_feedback(app, answer_log)
    app.add_middleware(_Guard, api_key=api_key, limits=limits, gauge=gauge)
    return app


def bind_socket(host: str, port: int):
    """A listening socket, bound before uvicorn starts: port 0 picks a free port, and the real one is known."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(
    app, sock, *, access_log: bool = True, log_level: str = "info", workers: int = 1, spec: dict | None = None
) -> None:
    """Serve `app` on `sock`; with workers > 1, that many processes share the socket, each building its own app
    from `spec` (see app_from_env): one Python process uses one core at most (the GIL)."""
    import uvicorn

    common = {"access_log": access_log, "log_level": log_level, "timeout_graceful_shutdown": 5,
              "timeout_keep_alive": 15}  # fmt: skip
    if workers <= 1:
        uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[SPEC_ENV] = json.dumps(spec)  # spawned workers inherit it; it holds no secret
    config = uvicorn.Config("dnfbot.serve.api:app_from_env", factory=True, workers=workers, **common)
    Multiprocess(config, sockets=[sock]).run()


def worker_spec(backends: dict, limits: Limits, warm: bool, answer_log: str | None = None) -> dict:
    """What a worker process needs to rebuild the app: open_backends() arguments (JSON-able), limits, warm, and
    the answer log's URL (each worker writes through its own writer; SQLite serialises them)."""
    return {"backends": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in backends.items()},
            "limits": asdict(limits), "warm": warm, "answer_log": answer_log}  # fmt: skip


def app_from_env() -> FastAPI:
    """The app factory each `--workers N` process runs: opens the index itself from $DNFBOT_SERVE_SPEC; the API
    key comes from $DNFBOT_API_KEY, as in the parent."""
    from pathlib import Path

    from dnfbot.serve.backends import open_backends

    spec = json.loads(os.environ[SPEC_ENV])
    args = dict(spec["backends"])
    for key in ("index_dir", "config"):
        args[key] = Path(args[key]) if args.get(key) else None
    from dnfbot.feedback.store import AnswerLog

    url = spec.get("answer_log")
    return create_app(
        open_backends(**args),
        api_key=os.environ.get("DNFBOT_API_KEY") or None,
        limits=Limits(**spec["limits"]),
        warm=spec["warm"],
        answer_log=AnswerLog(url) if url else None,
    )


class ServerThread:
    """uvicorn on a free loopback port in a background thread — for tests and embedding.

    with ServerThread(create_app(backends)) as url: httpx.get(url + "/healthz")"""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind_socket(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, access_log=False, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
