"""The HTTP API: OpenAI-compatible chat completions over the guide RAG, plus /ask, /search, /healthz.

    POST /v1/chat/completions  OpenAI schema; `stream: true` → server-sent events ending in `data: [DONE]`.
                               The last user message is the question, earlier turns the history. Extra fields:
                               request `dnfbot_filters` {category1,2,3}; response `dnfbot_sources`, `dnfbot_answered`.
    GET  /v1/models            one model per back end: dnfbot-extractive, dnfbot-hf / dnfbot-openai when configured
    POST /ask                  {"question", "category1..3", "history", "backend"} → what `dnfbot ask --json` prints
    POST /search               {"question", "k", "category1..3", "with_text"} → what `dnfbot search --json` prints
    GET  /healthz              liveness, back ends, index size (no key needed)
    POST /v1/feedback          {"answer_id", "rating": up|down, "correction", "comment"} (serve/feedback.py)

Every answer is logged with its trace when the app has an answer log (dnfbot/feedback): `/ask` returns its
`answer_id`, a chat completion's `id` is `chatcmpl-<answer_id>`. Logging is queued, never waited for.

The gate in front (serve/guard.py): bearer key → 401, body size → 413, in-flight requests → 429 + Retry-After.
Bodies (serve/schemas.py): bad JSON → 400, bad fields or max_tokens over the limit → 422. Running it (one or
several worker processes, or a test thread): serve/run.py. RAG work runs in worker threads, so the event loop keeps
accepting (and refusing) connections while answers are computed. CPU-only work (retrieval, extractive answers) is
queued for `Limits.cpu_threads` threads: under the GIL, more threads only interleave the same work, so every
request would finish as late as the slowest; FIFO keeps latency close to the mean. Model back ends (hf, openai)
generate in the general pool and do not queue behind each other.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dnfbot import __version__
from dnfbot.conversation import split_messages
from dnfbot.errors import DnfbotError, InputError
from dnfbot.feedback.trace import Traced
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.retrieval.sparse import Filters
from dnfbot.serve.backends import Backends
from dnfbot.serve.feedback import install as install_feedback
from dnfbot.serve.guard import Gauge, Guard, Limits, error_body
from dnfbot.serve.schemas import AskBody, BadRequest, ChatBody, SearchBody, parse_body

log = logging.getLogger("dnfbot.serve")
MODEL_PREFIX = "dnfbot-"


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, headers=None
):
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


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
        cid, created, model = (
            f"chatcmpl-{traced.id or uuid.uuid4().hex[:24]}",
            int(time.time()),
            _model_id(name),
        )
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

    install_feedback(app, answer_log)
    app.add_middleware(Guard, api_key=api_key, limits=limits, gauge=gauge)
    return app
