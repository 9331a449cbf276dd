"""Grounded extractive answers with no model: the passages' own best sentences for the question.

Each sentence of the top passages is scored by the share of the question's weight it covers — half from Kiwi
morphemes (idf-weighted), half from character bigrams (robust to slang and spacing) — plus a bonus for numbers
when the question asks for one (몇, 얼마, 언제 …) and a small penalty for lower-ranked passages. The best few
are returned in reading order; a glued run-on sentence is cut to the window around its matching terms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from dnfbot.corpus.sentences import split_sentences
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.retrieval.tokenizer import KoreanTokenizer, char_bigrams, get_tokenizer

MAX_SENTENCE_CHARS = 300
_ASKS_NUMBER_RE = re.compile(r"몇|얼마|언제|며칠|퍼센트|%|확률|레벨|초\b|개수|수치")
_DIGIT_RE = re.compile(r"\d")
NUMBER_BONUS = 0.15
RANK_PENALTY = 0.05


class ExtractiveGenerator(Generator):
    name = "extractive"

    def __init__(self, max_sentences: int = 3, tokenizer: KoreanTokenizer | None = None, **_: object):
        # **_: accepts the GenerationSettings other back ends take (settings=...), so all are built alike
        self.max_sentences = max_sentences
        self._tok = tokenizer

    def wants_spans(self, passage_text: str) -> bool:
        return True  # sentence scoring maps the stored tokens onto sentences: no Kiwi pass per answer

    @property
    def tokenizer(self) -> KoreanTokenizer:
        if self._tok is None:
            self._tok = get_tokenizer()
        return self._tok

    def select(self, request: GenerationRequest) -> list[tuple[float, int, int, str]]:
        """(score, passage rank, position, text) for the chosen sentences, in reading order."""
        weights = request.term_weights or {t: 1.0 for t in self.tokenizer.tokenize(request.question)}
        total = sum(weights.values()) or 1.0
        q_bigrams = set(char_bigrams(request.question))
        wants_number = bool(_ASKS_NUMBER_RE.search(request.question))
        missing = [p.text for p in request.passages if p.spans is None]
        fresh = iter(self.tokenizer.tokenize_spans_many(missing) if missing else [])
        spans_per_passage = [p.spans if p.spans is not None else next(fresh) for p in request.passages]
        scored = []
        for rank, (passage, spans) in enumerate(zip(request.passages, spans_per_passage, strict=True)):
            for pos, (a, b) in enumerate(split_sentences(passage.text)):
                terms = {t for t, s, e in spans if s >= a and e <= b}
                morph = sum(w for t, w in weights.items() if t in terms) / total
                text = passage.text[a:b]
                bigram = len(q_bigrams & set(char_bigrams(text))) / len(q_bigrams) if q_bigrams else 0.0
                if morph <= 0 and bigram <= 0:
                    continue
                score = (morph + bigram) / 2 - RANK_PENALTY * rank
                if wants_number and _DIGIT_RE.search(text):
                    score += NUMBER_BONUS
                scored.append((score, rank, pos, _window(text, spans, a, weights)))
        best = sorted(scored, key=lambda x: -x[0])[: self.max_sentences]
        return sorted(best, key=lambda x: (x[1], x[2]))

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        for i, (_, _, _, text) in enumerate(self.select(request)):
            yield ("" if i == 0 else " ") + text


def _window(text: str, spans: list[tuple[str, int, int]], offset: int, weights: dict[str, float]) -> str:
    """A long sentence cut to MAX_SENTENCE_CHARS around its first matching query term."""
    if len(text) <= MAX_SENTENCE_CHARS:
        return text
    hits = [s - offset for t, s, _ in spans if t in weights and offset <= s < offset + len(text)]
    start = max(0, min(hits) - MAX_SENTENCE_CHARS // 4) if hits else 0
    start = text.rfind(" ", 0, start) + 1 if start else 0
    piece = text[start : start + MAX_SENTENCE_CHARS]
    piece = piece.rsplit(" ", 1)[0] if len(piece) == MAX_SENTENCE_CHARS and " " in piece else piece
    return ("… " if start else "") + piece + (" …" if start + len(piece) < len(text) else "")
