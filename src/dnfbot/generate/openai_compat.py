"""`openai` back end: any OpenAI-compatible chat server — Ollama, vLLM, llama.cpp server, OpenAI itself.

    dnfbot ask "무의 장막 신수 추천" --backend openai --base-url http://127.0.0.1:11434/v1 --model eeve-10.8b

Base URL: --base-url / generation.base_url, else $OPENAI_BASE_URL, else https://api.openai.com/v1 when a key is
set. Key: $OPENAI_API_KEY only (never from files or flags, never logged). A local server needs no key; a
remote one without a key is refused before any request leaves the machine.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from urllib.parse import urlparse

from dnfbot.config import GenerationSettings
from dnfbot.errors import DnfbotError, InputError
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.generate.prompting import build_messages, load_template

OPENAI_URL = "https://api.openai.com/v1"
LOCAL_KEY = "not-needed"  # the client insists on some key; local servers ignore it


def is_local(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIGenerator(Generator):
    name = "openai"

    def __init__(self, settings: GenerationSettings, timeout: float = 120.0, **_: object):
        import openai

        base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL")
        key = os.environ.get("OPENAI_API_KEY") or None
        if not base_url:
            if not key:
                raise InputError(
                    "generation.base_url: give --base-url or OPENAI_BASE_URL "
                    "(e.g. http://127.0.0.1:11434/v1 for Ollama), or set OPENAI_API_KEY for api.openai.com"
                )
            base_url = OPENAI_URL
        if urlparse(base_url).scheme not in ("http", "https"):
            raise InputError(f"generation.base_url: '{base_url}' is not an http(s) URL")
        if not key and not is_local(base_url):
            raise InputError(f"generation.base_url: {base_url} is not local; set OPENAI_API_KEY for it")
        if not settings.model:
            raise InputError(
                "generation.model: the openai back end needs --model NAME (as the server calls it)"
            )
        self.base_url = base_url.rstrip("/")
        self.model = settings.model
        self.history_turns = settings.history_turns
        self.template = load_template(settings.prompt_template)
        self._secret = key
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=key or LOCAL_KEY, timeout=timeout, max_retries=1
        )

    def __repr__(self) -> str:  # no key in reprs, logs or tracebacks' locals
        return f"OpenAIGenerator(base_url={self.base_url!r}, model={self.model!r})"

    def messages(self, request: GenerationRequest) -> list[dict]:
        return build_messages(request, self.template, self.history_turns)

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        import openai

        try:
            chunks = self._client.chat.completions.create(
                model=self.model,
                messages=self.messages(request),
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                stream=True,
            )
            for chunk in chunks:
                if not chunk.choices:
                    continue
                text = chunk.choices[0].delta.content
                if text:
                    yield text
        except openai.APIConnectionError as e:
            raise DnfbotError(f"openai back end: cannot reach {self.base_url}: {self._clean(e)}") from None
        except openai.APIStatusError as e:
            raise DnfbotError(
                f"openai back end: {self.base_url} answered {e.status_code}: {self._clean(e)}"
            ) from None

    def _clean(self, e: Exception) -> str:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return msg.replace(self._secret, "***") if self._secret else msg
