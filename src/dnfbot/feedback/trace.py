"""What one served answer leaves in the log: the question, the conversation turn, the retrieval trace (query after
rewriting, hits with scores, coverage, which sentence came from which source), back end/model, the answer, the
answered flag and the latency.

`Capture` is a per-request view of a RAG that remembers what `RAG.prepare` decided (hits, evidence), without
touching the answer logic: `RAG.ask` and `RAG.ask_stream` call `self.prepare`, `self._answer` and
`self._refusal`, so a shallow copy whose attributes wrap those three sees everything the answer was built from.
The copy shares the index and caches, so it costs a few microseconds.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dnfbot.rag import Answer, Prepared, attribute, is_refusal

MAX_HITS = 10  # hits kept per answer in the trace (retrieval asks for top_chunks, usually 3)


def new_id() -> str:
    return uuid.uuid4().hex


def bare_id(answer_id: str) -> str:
    """'chatcmpl-<id>' (the chat completion's id) and '<id>' name the same answer."""
    return answer_id.removeprefix("chatcmpl-")


class Capture:
    """rag.ask / rag.ask_stream through `capture.rag`, then `capture.prepared` holds the retrieval and evidence,
    and `finish(question, text)` the Answer a stream ended in (the same one rag.ask would have returned)."""

    def __init__(self, rag: Any):
        self.prepared: Prepared | None = None
        self.answer: Answer | None = None
        self.base = rag
        view = copy.copy(rag)
        prepare, answer, refusal = rag.prepare, view._answer, view._refusal

        def _prepare(*a, **k):
            self.prepared = prepare(*a, **k)
            return self.prepared

        def _answer(*a, **k):
            self.answer = answer(*a, **k)
            return self.answer

        def _refusal(*a, **k):
            self.answer = refusal(*a, **k)
            return self.answer

        view.prepare, view._answer, view._refusal = _prepare, _answer, _refusal
        self.rag = view

    def finish(self, question: str, text: str) -> Answer:
        """The Answer of a streamed reply whose full text is `text`."""
        text = text.strip()
        if self.answer is not None and self.answer.answer.strip() == text:
            return self.answer  # extractive answers and refusals were built whole before streaming
        prep = self.prepared
        if prep is None:
            return Answer(question, text, not is_refusal(text), generator=self.rag.generator.name)
        if is_refusal(text) or not prep.answered:
            return self.rag._refusal(question, prep)
        return self.rag._answer(question, prep, attribute(text, prep.request.analyses), text)


@dataclass
class AnswerEntry:
    """One served answer, as handed to the log's writer; `row()` (JSON and all) runs in the writer thread."""

    id: str
    channel: str  # chat | ask | api | web
    answer: Answer
    prepared: Prepared | None = None
    latency_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    filters: Any = None
    conversation: str | None = None  # a random id per chat session / page session; never a user's
    model: str | None = None
    created: float = field(default_factory=time.time)

    def row(self) -> tuple:
        a, p = self.answer, self.prepared
        hits = []
        if p is not None:
            for h in p.hits[:MAX_HITS]:
                c = h.chunk
                hits.append({"rank": h.rank, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title,
                             "part": c.part, "score": round(float(h.score), 4), "category1": c.category1,
                             "category2": c.category2, "category3": c.category3})  # fmt: skip
        filt = self.filters.to_dict() if hasattr(self.filters, "to_dict") else (self.filters or {})
        trace = {
            "hits": hits,
            "sources": a.sources,
            "sentences": a.sentences,
            "filters": filt,
            "history_turns": len(self.history),
            "folded": bool(a.query and a.query != " ".join(a.question.split())),
        }
        cats = _categories(hits, a.sources, filt)
        turn = 1 + sum(1 for t in self.history if t.get("role") == "user")
        return (
            self.id, self.created, self.channel, self.conversation, turn, a.question, a.query or None,
            a.generator, self.model, a.answer, int(bool(a.answered)), a.kind, round(float(a.coverage), 4),
            round(self.latency_s * 1000, 3), *cats, json.dumps(trace, ensure_ascii=False, default=str),
        )  # fmt: skip


ANSWER_COLUMNS = ("id", "created", "channel", "conversation", "turn", "question", "query", "backend", "model",
                  "answer", "answered", "kind", "coverage", "latency_ms", "category1", "category2", "category3",
                  "trace")  # fmt: skip


def _categories(hits: list[dict], sources: list[dict], filters: dict) -> tuple:
    """The answer's category/board: of its first cited article, else of the best hit, else the filters."""
    first = None
    if sources:
        doc = sources[0].get("doc_id")
        first = next((h for h in hits if h["doc_id"] == doc), None)
    first = first or (hits[0] if hits else None)
    if first is not None:
        return first["category1"], first["category2"], first["category3"]
    return filters.get("category1"), filters.get("category2"), filters.get("category3")


@dataclass
class FeedbackEntry:
    answer_id: str
    rating: str | None  # up | down | None (a correction alone counts as down)
    correction: str | None = None
    comment: str | None = None
    channel: str = "api"
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)

    def row(self) -> tuple:
        return (
            self.id,
            self.answer_id,
            self.created,
            self.channel,
            self.rating,
            self.correction,
            self.comment,
        )


FEEDBACK_COLUMNS = ("id", "answer_id", "created", "channel", "rating", "correction", "comment")
MAX_CORRECTION = 20_000
MAX_COMMENT = 2_000
_ID_CHARS = set("0123456789abcdefABCDEF-_")
_KEY = re.compile(r"[A-Za-z0-9_.:-]{8,64}")


def make_feedback(
    answer_id: Any,
    rating: Any = None,
    correction: Any = None,
    comment: Any = None,
    channel: str = "api",
    feedback_id: Any = None,
) -> FeedbackEntry:
    """A validated feedback entry; bad input is one InputError naming the field."""
    from dnfbot.errors import InputError

    if not isinstance(answer_id, str) or not answer_id.strip():
        raise InputError("answer_id: required (the answer_id of /ask, or the chat completion's id)")
    aid = bare_id(answer_id.strip())
    if not (8 <= len(aid) <= 64) or not set(aid) <= _ID_CHARS:
        raise InputError(f"answer_id: '{answer_id[:80]}' is not an answer id")
    if rating is not None and rating not in ("up", "down"):
        raise InputError(f"rating: '{str(rating)[:20]}' — choose up or down")
    for name, value, limit in (("correction", correction, MAX_CORRECTION), ("comment", comment, MAX_COMMENT)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name}: must be a string")
        if isinstance(value, str) and len(value) > limit:
            raise InputError(f"{name}: at most {limit} characters")
    correction = correction.strip() if isinstance(correction, str) and correction.strip() else None
    comment = comment.strip() if isinstance(comment, str) and comment.strip() else None
    if rating is None and correction is None and comment is None:
        raise InputError("give a rating (up|down), a correction or a comment")
    if rating is None and correction is not None:
        rating = "down"  # writing the right answer says this one was wrong
    fb = FeedbackEntry(aid, rating, correction, comment, channel)
    if feedback_id is not None:
        if not isinstance(feedback_id, str) or not _KEY.fullmatch(feedback_id):
            raise InputError(
                "feedback_id: 8–64 characters of [A-Za-z0-9_.:-] (a client-chosen key makes retries safe)"
            )
        fb.id = feedback_id
    return fb


class Traced:
    """One answer on its way to the log: `rag` to answer with, then `done(answer)` or `done_stream(question,
    text)` queues it and returns its id. With no log (`answer_log=None`) it is the plain rag and ids are None."""

    def __init__(
        self,
        answer_log: Any,
        rag: Any,
        channel: str,
        history: list[dict] | None = None,
        filters: Any = None,
        conversation: str | None = None,
        answer_id: str | None = None,
    ):
        self.log = answer_log
        self.cap = Capture(rag) if answer_log is not None else None
        self.rag = self.cap.rag if self.cap is not None else rag
        self.channel, self.history, self.filters, self.conversation = (
            channel,
            history or [],
            filters,
            conversation,
        )
        self.id = (answer_id or new_id()) if answer_log is not None else None
        self.started = time.perf_counter()

    def done(self, answer: Answer) -> str | None:
        if self.log is None:
            return None
        gen = getattr(self.cap.base, "settings", None)
        model = gen.generation.model if gen is not None and answer.generator != "extractive" else None
        entry = AnswerEntry(self.id, self.channel, answer, self.cap.prepared, time.perf_counter() - self.started,
                            list(self.history), self.filters, self.conversation, model)  # fmt: skip
        return self.log.log(entry)

    def done_stream(self, question: str, text: str) -> str | None:
        if self.log is None:
            return None
        return self.done(self.cap.finish(question, text))
