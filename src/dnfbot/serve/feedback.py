"""POST /v1/feedback for the HTTP API (installed by serve/app.py's create_app).

    {"answer_id": "…", "rating": "up" | "down", "correction": "the right answer", "comment": "…",
     "feedback_id": "optional client-chosen key: a retried POST is stored once"}
    → 200 {"feedback_id", "answer_id", "status": "stored" | "duplicate"}   (after the row is committed)
      404 unknown answer_id · 422 a bad field · 503 the answer log is off or its database is unavailable

`answer_id` is what /ask returns, or the chat completion's `id` (chatcmpl-…).
"""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dnfbot.errors import InputError
from dnfbot.feedback.db import StoreError
from dnfbot.feedback.store import UNKNOWN
from dnfbot.feedback.trace import MAX_COMMENT, MAX_CORRECTION, make_feedback
from dnfbot.serve.guard import error_body
from dnfbot.serve.schemas import BadRequest, parse_body


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, headers=None
):
    return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer_id: str = Field(min_length=1, max_length=80)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, max_length=MAX_CORRECTION)
    comment: str | None = Field(None, max_length=MAX_COMMENT)
    feedback_id: str | None = Field(None, max_length=64)


def install(app, answer_log) -> None:
    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = await parse_body(request, FeedbackBody)
        if answer_log is None:
            return _error(503, "the answer log is off on this server (start it without --no-log)",
                          "server_error", "feedback_disabled")  # fmt: skip
        try:
            entry = make_feedback(body.answer_id, body.rating, body.correction, body.comment, "api",
                                  body.feedback_id)  # fmt: skip
        except InputError as e:
            raise BadRequest(422, str(e), "invalid_field") from None
        try:
            status = await answer_log.feedback_async(entry)
        except StoreError as e:
            return _error(503, str(e), "server_error", "store_unavailable", headers={"retry-after": "1"})
        if status == UNKNOWN:
            return _error(
                404, f"answer_id '{body.answer_id}' not found in the answer log", code="unknown_answer"
            )
        return {"feedback_id": entry.id, "answer_id": entry.answer_id, "status": status}
