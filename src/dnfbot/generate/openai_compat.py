"""`openai` back end: any OpenAI-compatible chat server — Ollama, vLLM, llama.cpp server, OpenAI itself.

    dnfbot ask "무의 장막 신수 추천" --backend openai --base-url http://127.0.0.1:11434/v1 --model eeve-10.8b

Base URL: --base-url / generation.base_url, else $OPENAI_BASE_URL, else https://api.openai.com/v1 when a key is
set. Key: $OPENAI_API_KEY only (never from files or flags, never logged). A local server needs no key; a
remote one without a key is refused before any request leaves the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dnfbot.errors import DnfbotError, InputError
from dnfbot.generate import GenerationRequest, Generator, endpoints
from dnfbot.generate.prompting import build_messages, load_template

if TYPE_CHECKING:
    from dnfbot.config import GenerationSettings


class OpenAIGenerator(Generator):
    name = "openai"

    def __init__(self, settings: GenerationSettings, timeout: float = 120.0, **_: object):
        import openai

        if not endpoints.configured_base_url(settings.base_url) and not endpoints.api_key():
            # api.openai.com is the default only for someone who set a key for it
            raise InputError(
                "generation.base_url: give --base-url or OPENAI_BASE_URL "
                "(e.g. http://127.0.0.1:11434/v1 for Ollama), or set OPENAI_API_KEY for api.openai.com"
            )
        base_url = endpoints.resolve_base_url(settings.base_url)
        key = endpoints.resolve_api_key(base_url)
        if not settings.model:
            raise InputError(
                "generation.model: the openai back end needs --model NAME (as the server calls it)"
            )
        self.base_url = base_url
        self.model = settings.model
        self.history_turns = settings.history_turns
        self.template = load_template(settings.prompt_template)
        self._secret = None if key == endpoints.LOCAL_KEY else key
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=1)

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
