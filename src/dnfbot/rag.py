"""Retrieval-augmented answering: retrieve, check the evidence, answer with sentence-level citations — or say
honestly that there is none.

1. The question (folded with the earlier topic when it is a follow-up: conversation.py) is read into concepts
   and retrieved (sparse, dense or hybrid: the same .search signature).
2. Every chunk of the top `answer.top_chunks` articles is analysed into sentences (retrieval/passages.py, cached).
3. The evidence gate (retrieval/evidence.py) looks for one window of sentences that covers the question; below
   `answer.min_coverage` the answer is exactly NO_INFO_ANSWER with answered=false, whatever the back end.
   Greetings and small talk get a short self-introduction, also answered=false.
4. The back end answers. The extractive one picks the guides' own sentences; each answer sentence carries the
   article it came from (`[n]` in the text, `sentences: [{text, source}]`), and `sources` lists only the
   articles that contributed. An LLM's sentences are attributed to the passage sentence they restate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnfbot import NO_INFO_ANSWER
from dnfbot.config import Settings
from dnfbot.corpus.chunking import Chunk
from dnfbot.corpus.sentences import split_sentences
from dnfbot.errors import InputError
from dnfbot.generate import GenerationRequest, Generator, Passage
from dnfbot.retrieval import evidence as gate
from dnfbot.retrieval.passages import PassageAnalysis, PassageCache
from dnfbot.retrieval.rerank import EvidenceReranker, article_chunks
from dnfbot.retrieval.sparse import Filters, Hit, SparseIndex
from dnfbot.retrieval.tokenizer import char_bigrams

SELF_INTRO = (
    "안녕하세요! 저는 던전앤파이터 공식 가이드를 바탕으로 답하는 dnfbot이에요. "
    "레이드·레기온·던전 공략, 장비 세팅, 직업 스킬트리 같은 것을 물어봐 주세요."
)
ATTRIBUTION_MIN = 0.5  # share of an LLM sentence's bigrams that one source sentence must hold


@dataclass
class Answer:
    question: str
    answer: str
    answered: bool
    sources: list[dict] = field(default_factory=list)
    coverage: float = 0.0
    generator: str = "extractive"
    sentences: list[dict] = field(
        default_factory=list
    )  # [{"text", "source": n}] — n indexes sources (1-based)
    kind: str = "answer"  # answer | no_info | chitchat
    query: str = ""  # what was retrieved (the question folded with the conversation's topic)

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "answered": self.answered,
            "sources": self.sources,
            "sentences": self.sentences,
        }


@dataclass
class Prepared:
    """Everything decided before the back end writes: hits, the gate's verdict and the generation request."""

    hits: list[Hit]
    query: gate.Query
    evidence: gate.Evidence
    answered: bool
    request: GenerationRequest
    hit_sources: list[dict]  # per passage: the article's source entry

    @property
    def coverage(self) -> float:
        return self.evidence.coverage

    @property
    def kind(self) -> str:
        return "chitchat" if self.query.chitchat else ("answer" if self.answered else "no_info")


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
        self,
        index: SparseIndex,
        settings: Settings,
        generator: Generator | None = None,
        retriever=None,
        passages: PassageCache | None = None,
    ):
        from dnfbot.generate.extractive import ExtractiveGenerator

        self.index = index
        self.settings = settings
        self.retriever = retriever or index  # dense/hybrid retrievers plug in here (same .search signature)
        self.generator = generator or ExtractiveGenerator(settings.answer.max_sentences)
        # One analysis cache per index, shared by the gate and the answerer (and by RAGs over the same index).
        self.passages = passages or PassageCache(self._spans_of)
        self.reader = gate.QueryReader(
            index.tokenizer,
            index.idf,
            index.vocabulary,
            index.bigram.idf,
            unknown_weight=settings.answer.unknown_weight,
        )
        r = settings.retrieval
        self.reranker = EvidenceReranker(
            index, self.passages, settings.answer, r.rerank_candidates, r.rerank_weight, r.rerank_window
        )

    def _spans_of(self, chunk: Chunk):
        stored = self.index.chunk_spans(self.index.position[chunk.chunk_id])
        return stored if stored is not None else self.index.tokenizer.tokenize_spans_many([chunk.text])[0]

    # --- retrieval and evidence ------------------------------------------------------------------------
    def search(self, question: str, k: int | None = None, filters: Filters | None = None) -> list[Hit]:
        q = normalise_query(question, self.settings.answer.max_query_chars)
        return self.retrieve(q, self.reader.read(q), k or self.settings.retrieval.k, filters)[1]

    @property
    def mode(self) -> str:
        """The first stage: sparse, dense or hybrid."""
        return getattr(self.retriever, "mode", "sparse")

    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        """A first stage's hits for `question` in evidence order (benches and fusion calibration)."""
        return self.reranker.rerank(
            self.reader.read(normalise_query(question, self.settings.answer.max_query_chars)), hits
        )

    def retrieve(
        self, text: str, query: gate.Query, k: int, filters: Filters | None = None
    ) -> tuple[list[Hit], list[Hit]]:
        """(the first stage's articles for `text`, as many as re-ranking reads; the best k of them re-ranked by
        the evidence `query` finds in them)."""
        first = self.retriever.search(text, self.reranker.fetch(k), filters)
        return first, self.reranker.rerank(query, first)[:k]

    def candidates(self, hits: list[Hit]) -> tuple[list[Chunk], list[int], list[dict]]:
        """Every chunk of the hit articles (nearest to the hit first, at most chunks_per_article), with each
        chunk's article rank and the article's source entry."""
        chunks, ranks, sources = [], [], []
        per_article = self.settings.answer.chunks_per_article
        for rank, h in enumerate(hits):
            for c in article_chunks(self.index, h, per_article):
                chunks.append(c)
                ranks.append(rank)
                sources.append(h.source())
        return chunks, ranks, sources

    def read(self, question: str, filters: Filters | None = None, context: str = "", asked_before: str = ""):
        """(hits, query, analyses, ranks, sources, evidence) for one question; `context` is a follow-up's
        earlier topic, searched with it and weighed less, from the earlier questions `asked_before`."""
        a = self.settings.answer
        q = normalise_query(question, a.max_query_chars)
        query = self.reader.read(q, context, asked_before)
        text = f"{context} {q}" if context else q
        first, hits = ([], []) if query.chitchat else self.retrieve(text, query, a.top_chunks, filters)
        chunks, ranks, sources = self.candidates(hits)
        analyses, ev = self._gather(query, chunks)
        if {h.chunk.doc_id for h in hits} != {h.chunk.doc_id for h in first[: a.top_chunks]}:
            # The gate judges the first stage's articles: searching ten for a window finds chance matches
            # for questions the guides do not answer (measured: docs/dense.md "Re-ranking by evidence").
            # The window (ev.passage, ev.window) stays the answer's.
            ev.coverage = self._gather(query, self.candidates(first[: a.top_chunks])[0])[1].coverage
        return hits, query, analyses, ranks, sources, ev

    def _gather(self, query: gate.Query, chunks: list[Chunk]) -> tuple[list[PassageAnalysis], gate.Evidence]:
        """The chunks' sentence analyses and the evidence gate's best window over them."""
        a = self.settings.answer
        analyses = [self.passages.get(c) for c in chunks]
        return analyses, gate.gather(query, analyses, a.window, a.bigram_share, a.unit_penalty)

    def evidence(
        self, question: str, filters: Filters | None = None
    ) -> tuple[list[Hit], dict[str, float], float]:
        """(hits, query term weights, coverage of the best window) for a question on its own."""
        hits, query, _, _, _, ev = self.read(question, filters)
        return hits, query.term_weights, ev.coverage

    def passes(self, ev: gate.Evidence, query: gate.Query) -> bool:
        if query.chitchat or query.other_game:
            return False
        return ev.passage is not None and ev.coverage >= self.settings.answer.min_coverage

    # --- answering -------------------------------------------------------------------------------------
    def prepare(
        self, question: str, filters: Filters | None = None, history: list[dict] | None = None
    ) -> Prepared:
        from dnfbot.conversation import fold_follow_up, recent_history

        gen = self.settings.generation
        history = recent_history(history or [], gen.history_turns)
        q = normalise_query(question, self.settings.answer.max_query_chars)
        read = self.read(q, filters)
        if gen.rewrite_query and history:
            read = fold_follow_up(
                q,
                history,
                read,
                lambda topic, before: self.read(q, filters, topic, before),
                self.passes,
                self.reader.read,
            )
        hits, query, analyses, ranks, sources, ev = read
        answered = bool(hits) and self.passes(ev, query)
        request = GenerationRequest(
            question=q,
            passages=[
                Passage(c.chunk_id, c.doc_id, c.title, c.part, c.text, s["score"])
                for c, s in zip((an.chunk for an in analyses), sources, strict=True)
            ],
            history=history,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            term_weights=query.term_weights,
            query=query,
            evidence=ev,
            analyses=analyses,
            passage_ranks=ranks,
            said=_said(history),
        )
        return Prepared(hits, query, ev, answered, request, sources)

    def ask(self, question: str, filters: Filters | None = None, history: list[dict] | None = None) -> Answer:
        prep = self.prepare(question, filters, history)
        if not prep.answered:
            return self._refusal(question, prep)
        cited = self._compose(prep)
        if cited is None:  # a model back end: its text, attributed sentence by sentence
            text = self.generator.generate(prep.request).strip()
            if is_refusal(text):
                return self._refusal(question, prep)
            cited = attribute(text, prep.request.analyses)
            return self._answer(question, prep, cited, text)
        if not cited:
            return self._refusal(question, prep)
        return self._answer(question, prep, cited)

    def ask_stream(
        self, question: str, filters: Filters | None = None, history: list[dict] | None = None
    ) -> tuple[list[dict], Iterator[str]]:
        """(sources, text stream). Without evidence the stream yields the refusal (or the self-introduction)
        alone and sources are empty."""
        prep = self.prepare(question, filters, history)
        if not prep.answered:
            return [], iter([self._refusal(question, prep).answer])
        cited = self._compose(prep)
        if cited is None:
            return _dedupe(prep.hit_sources), self.generator.stream(prep.request)
        if not cited:
            return [], iter([NO_INFO_ANSWER])
        a = self._answer(question, prep, cited)
        return a.sources, iter([a.answer])

    def _compose(self, prep: Prepared):
        compose = getattr(self.generator, "compose", None)
        return compose(prep.request) if compose else None

    def _refusal(self, question: str, prep: Prepared) -> Answer:
        text = SELF_INTRO if prep.query.chitchat else NO_INFO_ANSWER
        return Answer(
            question, text, False, [], prep.coverage, self.generator.name, [], prep.kind, prep.query.question
        )

    def _answer(self, question: str, prep: Prepared, cited: list, text: str | None = None) -> Answer:
        """Number the contributing articles in order of first use; mark each sentence with its article."""
        numbers: dict[str, int] = {}
        sources: list[dict] = []
        sentences = []
        for c in cited:
            if c.passage is None:
                sentences.append({"text": c.text, "source": None})
                continue
            src = prep.hit_sources[c.passage]
            doc = src["doc_id"]
            if doc not in numbers:
                numbers[doc] = len(numbers) + 1
                chunk = prep.request.analyses[c.passage].chunk
                sources.append(dict(src, part=chunk.part, n=numbers[doc]))
            sentences.append({"text": c.text, "source": numbers[doc]})
        if text is None:
            text = " ".join(f"{s['text']} [{s['source']}]" for s in sentences)
        if not sources:  # an LLM answer nothing could be traced to: show what it was given
            sources = [dict(s, n=i) for i, s in enumerate(_dedupe(prep.hit_sources), 1)]
        return Answer(
            question,
            text,
            True,
            sources,
            prep.coverage,
            self.generator.name,
            sentences,
            "answer",
            prep.query.question,
        )


@dataclass(frozen=True)
class _Attributed:
    text: str
    passage: int | None


def attribute(text: str, analyses: list[PassageAnalysis]) -> list[_Attributed]:
    """Each sentence of a generated answer, with the passage whose sentence it restates (None when no passage
    sentence holds ATTRIBUTION_MIN of its character bigrams)."""
    out = []
    for a, b in split_sentences(text):
        piece = text[a:b]
        grams = set(char_bigrams(piece))
        best, best_p = 0.0, None
        for p, an in enumerate(analyses):
            for s in an.sentences:
                if grams:
                    share = len(grams & s.bigrams) / len(grams)
                    if share > best:
                        best, best_p = share, p
        out.append(_Attributed(piece, best_p if best >= ATTRIBUTION_MIN else None))
    return out


def _said(history: list[dict]) -> list[str]:
    """The sentences earlier answers already gave (the answerer never repeats them)."""
    out = []
    for turn in history:
        if turn.get("role") == "assistant":
            text = str(turn.get("content") or "")
            out += [text[a:b] for a, b in split_sentences(text)]
    return out


def _dedupe(sources: list[dict]) -> list[dict]:
    seen, out = set(), []
    for s in sources:
        if s["doc_id"] not in seen:
            seen.add(s["doc_id"])
            out.append(s)
    return out


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
    idx, build = open_index(
        settings.resolve_index_dir(index_dir),
        settings,
        on_rebuild=_say_rebuilding,
        on_repair=_say_repairing,
        on_keep_stale=_say_keeping_stale,
    )
    generator = None
    if settings.generation.backend != "extractive":
        generator = get_generator(settings.generation.backend, settings=settings.generation)
    retriever = open_retriever(idx, build, settings, mode)
    return RAG(idx, settings, generator, retriever=retriever)


def _say_rebuilding(build: object) -> None:
    from dnfbot.console import console

    console.print("[yellow]corpus or settings changed since the index was built: rebuilding…")


def _say_repairing(reason: str) -> None:
    from dnfbot.console import console

    console.print(
        f"index is damaged ({reason}): rebuilding it…", style="yellow", markup=False, soft_wrap=True
    )


def _say_keeping_stale(msg: str) -> None:
    from dnfbot.console import console

    console.print(f"warning: {msg}; answering from it as it is", style="yellow", markup=False, soft_wrap=True)


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
