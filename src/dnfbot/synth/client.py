"""One chat completion against any OpenAI-compatible server, with our own retry loop.

The official `openai` client is built with max_retries=0 so that every retry is ours and counted. Retried:
HTTP 429, 5xx, timeouts, connection errors and 200s that are no completion (empty, no choices, not JSON), with exponential backoff and jitter
(delay_n = min(cap, base * 2**n), slept as uniform(delay_n / 2, delay_n)); a server's Retry-After
(or retry-after-ms) is honoured as a floor and pauses every worker, not just the one that got the 429.
401/403/404 stop the whole job (every request would fail the same way); other 4xx reject one passage.
Which URL and key: generate/endpoints.py, the policy the `openai` answer back end follows too.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from dnfbot.errors import InputError
from dnfbot.options import option

MAX_RETRY_AFTER = 600.0  # seconds; a longer Retry-After is capped rather than stalling the job for hours


@dataclass
class RetryPolicy:
    max_retries: int = option(6, "retries per request on 429/5xx/timeouts/connection errors")
    backoff: float = option(1.0, "base backoff in seconds (doubles per retry, with jitter)")
    max_backoff: float = option(60.0, "longest backoff in seconds")
    timeout: float = option(120.0, "seconds per request")

    def validate(self) -> None:
        if self.timeout <= 0 or self.backoff < 0 or self.max_retries < 0:
            raise InputError("--timeout must be positive; --backoff, --max-retries >= 0")

    def delay(self, retry: int, rng: random.Random) -> float:
        d = min(self.max_backoff, self.backoff * 2**retry)
        return rng.uniform(d / 2, d)


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool  # False when the server sent no usage (the job then uses estimates)


class RequestFailed(Exception):
    """This passage's request failed for good (retries spent, or a 4xx); str(e) is the reason."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.kind = kind


class FatalServerError(InputError):
    """Every request would fail the same way (bad key, wrong URL or model): stop the job."""


@dataclass
class ClientStats:
    retries: Counter = field(default_factory=Counter)  # kind → retries scheduled
    requests: int = 0


def require_openai() -> None:
    """One-line error instead of a traceback when the optional `openai` package is missing."""
    import importlib.util

    if importlib.util.find_spec("openai") is None:
        raise InputError(
            "the openai back end needs the 'openai' package: pip install 'dnfbot[synth]' "
            "(or use --backend extractive)"
        )


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from retry-after-ms / Retry-After (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(ms) / 1000))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))


class ChatClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        policy: RetryPolicy | None = None,
        *,
        seed: int | None = None,
    ):
        from openai import AsyncOpenAI

        self.base_url = base_url
        self.policy = policy or RetryPolicy()
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._pause_until = 0.0  # monotonic time before which nobody sends (set by Retry-After)
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=self.policy.timeout
        )

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self, model: str, messages: list[dict], *, max_tokens: int, temperature: float
    ) -> Reply:
        import openai
        from openai.types.chat import ChatCompletion

        retry = 0
        while True:
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            retry_after, problem = None, None
            self.stats.requests += 1
            try:
                resp = await self._client.post(
                    "/chat/completions",
                    body={
                        "model": model,
                        "messages": messages,
                        "max_tokens": max_tokens,
                        "temperature": temperature,
                    },
                    cast_to=ChatCompletion,
                )
                reply, problem = _reply(resp)
                if problem is None:
                    return reply
                kind = (
                    "bad_reply"  # the server's fault, not the passage's: retried, and retryable if it stays
                )
            except openai.APITimeoutError:
                kind = "timeout"
            except openai.APIConnectionError:
                kind = "connection"
            except openai.APIStatusError as e:
                status = e.status_code
                if status in (401, 403):
                    raise FatalServerError(
                        f"{self.base_url} refused the request (HTTP {status}): check OPENAI_API_KEY"
                    ) from None
                if status == 404:
                    raise FatalServerError(
                        f"{self.base_url} answered HTTP 404 for model '{model}': check --base-url and --model"
                    ) from None
                if status != 429 and status < 500:
                    raise RequestFailed(f"HTTP {status}: {_short(e)}", f"http_{status}") from None
                kind = "http_429" if status == 429 else "http_5xx"
                retry_after = parse_retry_after(e.response.headers)
            if retry >= self.policy.max_retries:
                detail = f" ({problem})" if problem else ""
                raise RequestFailed(f"{kind} after {retry + 1} attempts{detail}", kind)
            delay = self.policy.delay(retry, self._rng)
            if retry_after is not None:
                delay = max(delay, retry_after)
                self._pause_until = max(self._pause_until, time.monotonic() + retry_after)
            self.stats.retries[kind] += 1
            retry += 1
            await asyncio.sleep(delay)


def _reply(resp) -> tuple[Reply | None, str | None]:
    """(the reply, None), or (None, what is wrong) for a 200 that is no completion: a non-JSON body (the
    openai client then hands back its text), no choices, or empty content. Those are faults of the server or a
    proxy, so they must not become content rejects that a later run would skip."""
    if isinstance(resp, str | bytes) or not hasattr(resp, "choices"):
        body = " ".join(str(resp if not isinstance(resp, bytes) else resp[:200]).split())[:80]
        return None, f"HTTP 200 but not a chat completion: {body!r}"
    if not resp.choices:
        return None, "HTTP 200 with no choices"
    text = resp.choices[0].message.content or ""
    if not text.strip():
        return None, f"HTTP 200 with an empty completion (finish_reason {resp.choices[0].finish_reason!r})"
    usage = getattr(resp, "usage", None)
    if usage is not None and usage.prompt_tokens is not None:
        return Reply(text, int(usage.prompt_tokens), int(usage.completion_tokens or 0), True), None
    return Reply(text, 0, 0, False), None


def _short(e: Exception) -> str:
    msg = " ".join(str(getattr(e, "message", e)).split())
    return msg[:200]
