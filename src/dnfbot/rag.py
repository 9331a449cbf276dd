"""Retrieval-augmented answering: retrieve, check the evidence, generate — or say honestly there is none.

The evidence gate is retrieval-side and generator-independent: the share of the question's term weight (BM25
idf, unknown words weigh most) found in the best passage must reach `answer.min_coverage`, calibrated on the dev
set. Below it the answer is exactly NO_INFO_ANSWER with answered=false, whatever the back end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnfbot import NO_INFO_ANSWER
from dnfbot.config import Settings
from dnfbot.corpus.categories import canonical_query
from dnfbot.errors import InputError
from dnfbot.generate import GenerationRequest, Generator, Passage
from dnfbot.retrieval.sparse import Filters, Hit, SparseIndex
from dnfbot.retrieval.tokenizer import char_bigrams


@dataclass
class Answer:
    question: str
    answer: str
    answered: bool
    sources: list[dict] = field(default_factory=list)
    coverage: float = 0.0
    generator: str = "extractive"

    def to_dict(self) -> dict:
        return {"answer": self.answer, "answered": self.answered, "sources": self.sources}


def is_refusal(text: str) -> bool:
    """A back end that writes nothing, or says it has no information anywhere in its text, refused."""
    return not text.strip() or NO_INFO_ANSWER in text


def normalise_query(question: str, max_chars: int) -> str:
    """Empty questions are an error; very long ones are cut safely (a 100,000-character paste is not a query)."""
    q = " ".join(question.split())
    if not q:
        raise InputError("empty question")
    return q[:max_chars]


class RAG:
    def __init__(
        self, index: SparseIndex, settings: Settings, generator: Generator | None = None, retriever=None
    ):
        from dnfbot.generate.extractive import ExtractiveGenerator

        self.index = index
        self.settings = settings
        self.retriever = retriever or index  # dense/hybrid retrievers plug in here (same .search signature)
        self.generator = generator or ExtractiveGenerator(settings.answer.max_sentences, index.tokenizer)

    def search(self, question: str, k: int | None = None, filters: Filters | None = None) -> list[Hit]:
        q = normalise_query(question, self.settings.answer.max_query_chars)
        return self.retriever.search(q, k or self.settings.retrieval.k, filters)

    def evidence(
        self, question: str, filters: Filters | None = None
    ) -> tuple[list[Hit], dict[str, float], float]:
        """Top passages, query term weights, and how well the best passage covers the question.

        Coverage of a passage = mean of the idf-weighted share of the question's morphemes and of its character
        bigrams that the passage contains; the evidence is the best passage's coverage."""
        q = normalise_query(question, self.settings.answer.max_query_chars)
        hits = self.retriever.search(q, self.settings.answer.top_chunks, filters)
        canonical = canonical_query(q)  # "드나" is not in the guides; "드래곤나이트" is
        tokens = self.index.tokenizer.tokenize(canonical)
        weights = {t: self.index.idf(t) for t in tokens}
        if not hits:
            return hits, weights, 0.0
        bigrams = {t: self.index.bigram.idf(t) for t in char_bigrams(canonical)}
        best = 0.0
        for h in hits:
            pos = self.index.position[h.chunk.chunk_id]
            cov = (_coverage(self.index.morph, weights, pos) + _coverage(self.index.bigram, bigrams, pos)) / 2
            best = max(best, cov)
        return hits, weights, best

    def prepare(self, question: str, filters: Filters | None = None, history: list[dict] | None = None):
        from dnfbot.conversation import recent_history, retrieval_query

        gen = self.settings.generation
        history = recent_history(history or [], gen.history_turns)
        query = retrieval_query(question, history, gen.rewrite_query)
        hits, weights, coverage = self.evidence(query, filters)
        answered = bool(hits) and coverage >= self.settings.answer.min_coverage
        request = GenerationRequest(
            question=normalise_query(question, self.settings.answer.max_query_chars),
            passages=[self._passage(h) for h in hits],
            history=history,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            term_weights=weights,
        )
        return hits, coverage, answered, request

    def ask(self, question: str, filters: Filters | None = None, history: list[dict] | None = None) -> Answer:
        hits, coverage, answered, request = self.prepare(question, filters, history)
        text = self.generator.generate(request).strip() if answered else ""
        return self._finish(question, hits, coverage, answered, text)

    def ask_stream(
        self, question: str, filters: Filters | None = None, history: list[dict] | None = None
    ) -> tuple[list[dict], Iterator[str]]:
        """(sources, token stream). The stream yields NO_INFO_ANSWER alone when there is no evidence."""
        hits, coverage, answered, request = self.prepare(question, filters, history)
        if not answered:
            return [], iter([NO_INFO_ANSWER])
        return [h.source() for h in hits], self.generator.stream(request)

    def _passage(self, h: Hit) -> Passage:
        c = h.chunk
        # Reading spans is a file read + JSON decode per passage: only for a back end that uses them.
        spans = (
            self.index.chunk_spans(self.index.position[c.chunk_id])
            if self.generator.wants_spans(c.text)
            else None
        )
        return Passage(c.chunk_id, c.doc_id, c.title, c.part, c.text, h.score, spans)

    def _finish(self, question: str, hits: list[Hit], coverage: float, answered: bool, text: str) -> Answer:
        if not answered or is_refusal(text):
            return Answer(question, NO_INFO_ANSWER, False, [], coverage, self.generator.name)
        return Answer(question, text, True, [h.source() for h in hits], coverage, self.generator.name)


def _coverage(field, weights: dict[str, float], pos: int) -> float:
    total = sum(weights.values())
    return sum(w for t, w in weights.items() if field.contains(t, pos)) / total if total else 0.0


# --- the app factory: what every front end opens (CLI, HTTP API, web page, benchmarks) -----------------------


def open_rag(
    index_dir: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    backend: str | None = None,
    mode: str | None = None,
    **gen_overrides: object,
) -> RAG:
    """Settings + the live index (rebuilt first if its corpus or settings changed) + retriever + generator.

    gen_overrides: generation settings given on the command line (model, adapter, base_url, …); None = not given."""
    from dnfbot.config import load_settings
    from dnfbot.generate import get_generator
    from dnfbot.retrieval.index import open_index, open_retriever

    settings = load_settings(config)
    overrides = {k: v for k, v in dict(gen_overrides, backend=backend).items() if v is not None}
    if overrides:
        settings.generation = settings.generation.model_copy(update=overrides)
    idx, build = open_index(settings.resolve_index_dir(index_dir), settings, on_rebuild=_say_rebuilding)
    generator = None
    if settings.generation.backend != "extractive":
        generator = get_generator(settings.generation.backend, settings=settings.generation)
    retriever = open_retriever(idx, build, settings, mode)
    return RAG(idx, settings, generator, retriever=retriever)


def _say_rebuilding(build: object) -> None:
    from dnfbot.console import console

    console.print("[yellow]corpus or settings changed since the index was built: rebuilding…")


def read_questions(path: str | os.PathLike) -> list[str]:
    """Questions from a batch file ({"question": …} per line), validated before any work starts."""
    from dnfbot.io import iter_records, require_text

    questions = []
    for where, rec in iter_records(path):
        require_text(rec, "question", where)
        questions.append(rec["question"])  # as written: batch output echoes it
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions
