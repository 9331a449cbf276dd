"""Grounded extractive answers with no model: the passages' own best sentences for the question.

Each sentence of the top passages is scored by the share of the question's term weight (BM25 idf) it covers,
with a small preference for higher-ranked passages; the best few are returned in reading order.
"""

from __future__ import annotations

from collections.abc import Iterator

from dnfbot.corpus.sentences import split_sentences
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.retrieval.tokenizer import KoreanTokenizer, get_tokenizer

MAX_SENTENCE_CHARS = 400  # glued run-on "sentences" are cut, so an answer stays readable


class ExtractiveGenerator(Generator):
    name = "extractive"

    def __init__(self, max_sentences: int = 3, tokenizer: KoreanTokenizer | None = None, **_: object):
        # **_: accepts the GenerationSettings other back ends take (settings=...), so all are built alike
        self.max_sentences = max_sentences
        self._tok = tokenizer

    @property
    def tokenizer(self) -> KoreanTokenizer:
        if self._tok is None:
            self._tok = get_tokenizer()
        return self._tok

    def select(self, request: GenerationRequest) -> list[tuple[float, int, int, str]]:
        """(score, passage rank, position, sentence) for the chosen sentences, in reading order."""
        weights = request.term_weights or {t: 1.0 for t in self.tokenizer.tokenize(request.question)}
        total = sum(weights.values()) or 1.0
        spans_per_passage = self.tokenizer.tokenize_spans_many([p.text for p in request.passages])
        scored = []
        for rank, (passage, spans) in enumerate(zip(request.passages, spans_per_passage, strict=True)):
            for pos, (a, b) in enumerate(split_sentences(passage.text)):
                terms = {t for t, s, e in spans if s >= a and e <= b}
                covered = sum(w for t, w in weights.items() if t in terms)
                if covered <= 0:
                    continue
                score = covered / total - 0.05 * rank
                text = passage.text[a:b]
                if len(text) > MAX_SENTENCE_CHARS:
                    text = text[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " …"
                scored.append((score, rank, pos, text))
        best = sorted(scored, key=lambda x: -x[0])[: self.max_sentences]
        return sorted(best, key=lambda x: (x[1], x[2]))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        chosen = self.select(request)
        for i, (_, _, _, text) in enumerate(chosen):
            yield ("" if i == 0 else " ") + text
