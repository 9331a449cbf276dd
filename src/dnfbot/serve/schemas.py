"""The API's request bodies and its error shape (OpenAI's, so OpenAI clients surface our messages)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dnfbot.retrieval.sparse import Filters

# A guide question is a line or two; longer is a paste (or an attack on the tokenizer).
MAX_QUESTION_CHARS = 4000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Turn(Body):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class FilterBody(Body):
    category1: str | None = None
    category2: str | None = None
    category3: str | None = None

    def filters(self) -> Filters:
        return Filters(self.category1 or None, self.category2 or None, self.category3 or None)


class AskBody(FilterBody):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    history: list[Turn] = Field(default_factory=list, max_length=100)
    backend: str | None = None


class SearchBody(FilterBody):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
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

    @field_validator("messages")
    @classmethod
    def _short_enough(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and len(content) > MAX_QUESTION_CHARS * 5:  # history turns are longer
                raise ValueError(f"a message is over {MAX_QUESTION_CHARS * 5} characters")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1].get("content") if users else None
        if isinstance(last, str) and len(last) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question (last user message) is over {MAX_QUESTION_CHARS} characters")
        return messages


class BadRequest(Exception):
    """A request the API refuses with `status` (400/422), answered in the OpenAI error shape."""

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
