"""Recursive character chunking with exact offsets.

Like LangChain's RecursiveCharacterTextSplitter (3,000 chars, 250 overlap by default) but each cut is placed
at the best boundary available — paragraph, line, Korean sentence end, space, anywhere — in the back half of
the window, and every chunk records [start, end) offsets into its document's cleaned text, so
`doc.text[c.start:c.end] == c.text` always holds.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

from dnfbot.corpus.document import Document
from dnfbot.corpus.sentences import sentence_ends


@dataclass
class Chunk:
    chunk_id: str  # "{doc_id}#{part}"
    doc_id: str
    part: int  # 1-based position of the chunk in its document
    title: str
    text: str
    start: int
    end: int
    category1: str | None = None
    category2: str | None = None
    category3: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _boundaries(text: str) -> list[list[int]]:
    """Cut positions per level (0 = paragraph … 3 = space); each list sorted."""
    para, line, space = [], [], []
    for i, ch in enumerate(text):
        if ch == "\n":
            if text.startswith("\n", i + 1):
                continue  # inside a blank-line run: the cut goes after its last newline
            (para if i > 0 and text[i - 1] == "\n" else line).append(i + 1)
        elif ch == " ":
            space.append(i + 1)
    return [para, line, sentence_ends(text), space]


def _best_cut(levels: list[list[int]], lo: int, hi: int) -> int:
    """The latest position in (lo, hi] at the coarsest level that has one; hi if none."""
    for positions in levels:
        j = bisect.bisect_right(positions, hi) - 1
        if j >= 0 and positions[j] > lo:
            return positions[j]
    return hi


def _next_start(levels: list[list[int]], end: int, overlap: int, start: int) -> int:
    """Start the next chunk about `overlap` characters before `end`, on the finest-but-clean boundary.

    It starts at least a quarter of the chunk's length after `start`, so the number of chunks (and the cost of
    chunking) stays linear in the text's length whatever the overlap (overlap 999 / size 1000 would otherwise
    advance one character per chunk)."""
    if overlap <= 0:
        return end
    lo = max(start + max(1, (end - start) // 4), end - overlap)
    for positions in levels:
        j = bisect.bisect_left(positions, lo)
        if j < len(positions) and positions[j] < end - 1:
            return positions[j]
    return lo


def split_text(text: str, size: int = 3000, overlap: int = 250) -> list[tuple[int, int]]:
    """[start, end) spans covering text, each at most `size` chars, neighbours sharing <= `overlap`."""
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than chunk size ({size})")
    n = len(text)
    if n == 0:
        return []
    levels = _boundaries(text)
    spans = []
    start = 0
    while True:
        if n - start <= size:
            spans.append((start, n))
            break
        end = _best_cut(levels, start + size // 2, start + size)
        spans.append((start, end))
        start = _next_start(levels, end, overlap, start)
    return [_trim(text, a, b) for a, b in spans]


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_document(doc: Document, size: int = 3000, overlap: int = 250) -> list[Chunk]:
    return [
        Chunk(
            chunk_id=f"{doc.doc_id}#{i}",
            doc_id=doc.doc_id,
            part=i,
            title=doc.title,
            text=doc.text[a:b],
            start=a,
            end=b,
            category1=doc.category1,
            category2=doc.category2,
            category3=doc.category3,
        )
        for i, (a, b) in enumerate(split_text(doc.text, size, overlap), start=1)
        if b > a
    ]


def chunk_documents(docs: list[Document], size: int = 3000, overlap: int = 250) -> list[Chunk]:
    return [c for d in docs for c in chunk_document(d, size, overlap)]
