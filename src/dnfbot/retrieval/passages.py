"""Sentences of indexed passages with the terms in each: what the evidence gate and the answerer both read.

A chunk's analysis maps its stored Kiwi token spans (written at index time) onto its sentences, once; a cache
keyed by chunk id keeps it for later questions (no Kiwi pass and no span read per answer once warm). Chunks of
one article overlap, so each sentence also carries its offset in the article: the same sentence reached through
two chunks is one sentence.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dnfbot.corpus.chunking import Chunk
from dnfbot.corpus.sentences import is_heading, junk_kind, split_sentences
from dnfbot.retrieval.tokenizer import char_bigrams

Span = tuple[str, int, int]

# What a sentence gives numbers in: a question asking for one of these is answered by a sentence that has it.
UNIT_PATTERNS: dict[str, re.Pattern] = {
    "percent": re.compile(r"\d\s?%|\d\s?퍼(?:센트)?|\d\s?프로"),
    "seconds": re.compile(r"\d\s?(?:초|분|시간)"),
    "count": re.compile(r"\d\s?(?:개|마리|장|칸)"),
    "times": re.compile(r"\d\s?(?:회|번|타)"),
    "level": re.compile(r"\d\s?(?:레벨|렙|랩|lv)|lv\.?\s?\d|\d\s?제", re.IGNORECASE),
    "fame": re.compile(r"\d{1,3}(?:,\d{3})+|\d{4,6}"),
    "stage": re.compile(r"\d\s?(?:단계|스택|페이즈|각|넴)"),
    "people": re.compile(r"\d\s?(?:인|명)"),
    "date": re.compile(r"\d{1,2}\s?월|\d{1,2}\s?일|\d{2,4}[./]\d{1,2}[./]?\d{0,2}|\d{4}\s?년|요일|주차"),
    "number": re.compile(r"\d"),
}


@dataclass(frozen=True)
class Sentence:
    pos: int  # index among its passage's sentences
    start: int  # offset in the passage text
    end: int
    doc_start: int  # offset in the article (the same sentence in two overlapping chunks has one)
    text: str
    compact: str  # lower-cased, without spaces: for finding a question word Kiwi cut differently
    terms: frozenset[str]  # Kiwi content terms inside it
    bigrams: frozenset[str]
    units: frozenset[str]  # keys of UNIT_PATTERNS it contains
    junk: str | None  # junk_kind: never an answer
    heading: bool


@dataclass(frozen=True)
class PassageAnalysis:
    chunk: Chunk
    spans: tuple[Span, ...]
    sentences: tuple[Sentence, ...]


def sentence_units(text: str) -> frozenset[str]:
    return frozenset(name for name, pat in UNIT_PATTERNS.items() if pat.search(text))


def analyse(chunk: Chunk, spans: list[Span]) -> PassageAnalysis:
    """Split a chunk into sentences and give each the Kiwi terms whose span lies inside it."""
    text = chunk.text
    spans = sorted(spans, key=lambda s: s[1])
    starts = [s for _, s, _ in spans]
    sentences = []
    for pos, (a, b) in enumerate(split_sentences(text)):
        i = bisect.bisect_left(starts, a)
        terms = set()
        while i < len(spans) and spans[i][1] < b:
            if spans[i][2] <= b:
                terms.add(spans[i][0])
            i += 1
        piece = text[a:b]
        sentences.append(
            Sentence(
                pos=pos,
                start=a,
                end=b,
                doc_start=chunk.start + a,
                text=piece,
                compact="".join(piece.split()).lower(),
                terms=frozenset(terms),
                bigrams=frozenset(char_bigrams(piece)),
                units=sentence_units(piece),
                junk=junk_kind(piece),
                heading=is_heading(piece),
            )
        )
    return PassageAnalysis(chunk, tuple(spans), tuple(sentences))


class PassageCache:
    """Thread-safe LRU of chunk analyses, keyed by chunk id. `spans_of(chunk)` supplies the stored spans (or
    runs Kiwi for an index built without them)."""

    def __init__(self, spans_of: Callable[[Chunk], list[Span]], max_entries: int = 4096):
        self.spans_of = spans_of
        self.max_entries = max_entries
        self._items: OrderedDict[str, PassageAnalysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, chunk: Chunk) -> PassageAnalysis:
        with self._lock:
            hit = self._items.get(chunk.chunk_id)
            if hit is not None and hit.chunk.text == chunk.text:
                self._items.move_to_end(chunk.chunk_id)
                return hit
        analysis = analyse(chunk, self.spans_of(chunk))
        with self._lock:
            self._items[chunk.chunk_id] = analysis
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return analysis

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, chunk_id: str) -> bool:
        return chunk_id in self._items
