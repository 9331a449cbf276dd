"""The answerers a server or the web page offers: one index, one RAG per generator back end.

`extractive` is always there (no model); the back end chosen by config/flags (hf or openai) is added beside it
and is the default. The extractive one remembers each passage's analysis (see CachedExtractiveGenerator), so it reads a passage's
stored token spans only the first time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot.corpus.sentences import split_sentences
from dnfbot.generate import GenerationRequest

# The extractive scorer's own constants and windowing: CachedExtractiveGenerator only caches, it scores alike.
from dnfbot.generate.extractive import (
    _ASKS_NUMBER_RE,
    _DIGIT_RE,
    NUMBER_BONUS,
    RANK_PENALTY,
    ExtractiveGenerator,
    _window,
)
from dnfbot.rag import RAG
from dnfbot.retrieval.tokenizer import char_bigrams

CACHE_ENTRIES = 8192


@dataclass(frozen=True)
class _Sentence:
    pos: int  # index among the passage's sentences
    start: int  # offset in the passage
    text: str
    terms: frozenset[str]  # Kiwi terms inside the sentence
    bigrams: frozenset[str]
    has_digit: bool


@dataclass(frozen=True)
class _Analysis:
    spans: list[tuple[str, int, int]]
    sentences: tuple[_Sentence, ...]


class CachedExtractiveGenerator(ExtractiveGenerator):
    """ExtractiveGenerator.select with each passage's analysis (Kiwi spans, sentences, their terms and bigrams)
    computed once per passage text instead of on every request: the same choices and text, ~100x less work
    once warm (three 3,000-character passages cost ~150 ms of Kiwi and ~5 ms of Python per request otherwise).
    tests/test_serve_backends.py checks it stays identical to the base class."""

    def __init__(self, max_sentences: int = 3, tokenizer=None, max_entries: int = CACHE_ENTRIES, **_: object):
        super().__init__(max_sentences, tokenizer)
        self.max_entries = max_entries
        self._cache: dict[str, _Analysis] = {}
        self._lock = threading.Lock()

    def analyse(self, texts: list[str], spans: list | None = None) -> list[_Analysis]:
        """Each text's analysis; `spans[i]`, when given, are text i's stored Kiwi spans (the index's own, which
        the plain generator also uses), else Kiwi runs now."""
        cache = self._cache
        stored = {t: s for t, s in zip(texts, spans or [None] * len(texts), strict=True) if s is not None}
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        fresh = {}
        if missing:
            need_kiwi = [t for t in missing if t not in stored]
            kiwi = dict(zip(need_kiwi, self.tokenizer.tokenize_spans_many(need_kiwi), strict=True))
            for text in missing:
                fresh[text] = _analysis(text, stored[text] if text in stored else kiwi[text])
            with self._lock:
                if len(cache) + len(fresh) > self.max_entries:  # drop the oldest half
                    for key in list(cache)[: len(cache) // 2]:
                        cache.pop(key, None)
                cache.update(fresh)
        return [fresh.get(t) or cache.get(t) or self.analyse([t])[0] for t in texts]

    def warm(
        self, texts: Iterable[str], batch: int = 4, stop: threading.Event | None = None, spans_of=None
    ) -> int:
        """Analyse passages ahead of time, in small batches so requests can take the GIL / Kiwi in between.
        `spans_of(i)` gives text i's stored spans (or None: Kiwi)."""
        todo = [(i, t) for i, t in enumerate(texts) if t not in self._cache]
        for j in range(0, len(todo), batch):
            if stop is not None and stop.is_set():
                return j
            part = todo[j : j + batch]
            spans = [spans_of(i) for i, _ in part] if spans_of else None
            self.analyse([t for _, t in part], spans)
        return len(todo)

    def cached(self) -> int:
        return len(self._cache)

    def has(self, text: str) -> bool:
        return text in self._cache

    def wants_spans(self, passage_text: str) -> bool:
        return not self.has(passage_text)  # analysed once; later answers need no stored spans

    def select(self, request: GenerationRequest) -> list[tuple[float, int, int, str]]:
        weights = request.term_weights or {t: 1.0 for t in self.tokenizer.tokenize(request.question)}
        total = sum(weights.values()) or 1.0
        q_bigrams = set(char_bigrams(request.question))
        wants_number = bool(_ASKS_NUMBER_RE.search(request.question))
        analyses = self.analyse([p.text for p in request.passages], [p.spans for p in request.passages])
        terms, items = set(weights), list(weights.items())
        scored = []
        for rank, an in enumerate(analyses):
            for s in an.sentences:
                # The set intersection skips most sentences in C; the sum keeps the base class's order (same floats).
                common = s.terms & terms
                morph = sum(w for t, w in items if t in common) / total if common else 0.0
                bigram = len(q_bigrams & s.bigrams) / len(q_bigrams) if q_bigrams else 0.0
                if morph <= 0 and bigram <= 0:
                    continue
                score = (morph + bigram) / 2 - RANK_PENALTY * rank
                if wants_number and s.has_digit:
                    score += NUMBER_BONUS
                scored.append((score, rank, s.pos, s))
        best = sorted(sorted(scored, key=lambda x: -x[0])[: self.max_sentences], key=lambda x: (x[1], x[2]))
        return [
            (score, rank, pos, _window(s.text, analyses[rank].spans, s.start, weights))
            for score, rank, pos, s in best
        ]


def _analysis(text: str, spans: list[tuple[str, int, int]]) -> _Analysis:
    starts = [s for _, s, _ in spans]
    sentences = []
    for pos, (a, b) in enumerate(split_sentences(text)):
        i = bisect.bisect_left(starts, a)
        terms = set()
        while i < len(spans) and spans[i][1] <= b:  # spans are in text order
            if spans[i][2] <= b:
                terms.add(spans[i][0])
            i += 1
        piece = text[a:b]
        sentences.append(
            _Sentence(
                pos, a, piece, frozenset(terms), frozenset(char_bigrams(piece)), bool(_DIGIT_RE.search(piece))
            )
        )
    return _Analysis(spans, tuple(sentences))


@dataclass
class Backends:
    """RAGs by back-end name over one shared index; `default` answers when a request names none."""

    rags: dict
    default: str
    models: dict[str, str | None] = field(default_factory=dict)  # back end → model name/path shown to users

    def get(self, name: str | None):
        return self.rags[name or self.default]

    @property
    def names(self) -> list[str]:
        return list(self.rags)

    def passage_cache(self) -> CachedExtractiveGenerator | None:
        gen = getattr(self.rags.get("extractive"), "generator", None)
        return gen if isinstance(gen, CachedExtractiveGenerator) else None

    def warm(self, stop: threading.Event | None = None) -> int:
        """Analyse every indexed passage for the extractive back end ahead of the first questions."""
        cache = self.passage_cache()
        if cache is None:
            return 0
        index = self.rags["extractive"].index
        return cache.warm((c.text for c in index.chunks), stop=stop, spans_of=index.chunk_spans)


def open_backends(
    index_dir: Path | None = None,
    config: Path | None = None,
    backend: str | None = None,
    mode: str | None = None,
    **gen_overrides,
) -> Backends:
    """Load the index once; build the configured back end and, beside it, the extractive one."""
    from dnfbot.rag import open_rag

    base = open_rag(index_dir, config, backend, mode, **gen_overrides)
    name = base.settings.generation.backend
    # Both share the index, settings and retriever (sparse, dense or hybrid as configured).
    rag = RAG(base.index, base.settings, base.generator, base.retriever)
    cached = CachedExtractiveGenerator(base.settings.answer.max_sentences, base.index.tokenizer)
    extractive = RAG(base.index, base.settings, cached, base.retriever)
    rags = {"extractive": extractive}
    models: dict[str, str | None] = {"extractive": None}
    if name != "extractive":
        rags = {name: rag, **rags}
        models[name] = rag.settings.generation.model
    # Load Kiwi now (seconds), so the first question is not the one that waits for it.
    extractive.search("던파 공략")
    return Backends(rags, name, models)
