"""BM25 over Kiwi morphemes (bm25s), with metadata filters and per-term evidence for the answerer."""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnfbot.corpus.aliases import expand_query, query_classes
from dnfbot.corpus.chunking import Chunk
from dnfbot.io import iter_jsonl
from dnfbot.retrieval.tokenizer import KoreanTokenizer, char_bigrams


@dataclass
class Filters:
    """Exact match on category1/2; category3 matches exactly or as a substring ("소드마스터")."""

    category1: str | None = None
    category2: str | None = None
    category3: str | None = None

    def empty(self) -> bool:
        return not (self.category1 or self.category2 or self.category3)

    def accepts(self, c: Chunk) -> bool:
        if self.category1 and c.category1 != self.category1:
            return False
        if self.category2 and c.category2 != self.category2:
            return False
        return not (self.category3 and not (c.category3 and self.category3 in c.category3))

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class Hit:
    chunk: Chunk
    score: float
    rank: int  # 1-based

    def source(self) -> dict:
        c = self.chunk
        return {"doc_id": c.doc_id, "title": c.title, "part": c.part, "score": round(float(self.score), 4)}


Span = tuple[str, int, int]


def chunk_spans_from_doc(doc_spans: list[Span], chunks: list[Chunk]) -> list[list[Span]]:
    """Assign a document's token spans to its (overlapping) chunks, offsets relative to each chunk's text:
    tokenize once, not per chunk."""
    starts = [s for _, s, _ in doc_spans]
    out = []
    for c in chunks:
        i = bisect.bisect_left(starts, c.start)
        j = bisect.bisect_left(starts, c.end)
        out.append([(tok, s - c.start, e - c.start) for tok, s, e in doc_spans[i:j] if e <= c.end])
    return out


class Field:
    """One BM25 (bm25s, Lucene variant) over one token stream, with the df/postings the answerer needs."""

    def __init__(self, bm25):
        self.bm25 = bm25
        self.n = int(bm25.scores["num_docs"])
        self._indptr = np.asarray(bm25.scores["indptr"])
        self._indices = np.asarray(bm25.scores["indices"])
        self._data = np.asarray(bm25.scores["data"])
        self._df = np.diff(self._indptr)

    @classmethod
    def build(cls, token_lists: list[list[str]], k1: float, b: float) -> Field:
        import bm25s

        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        vocab: dict[str, int] = {"": 0}
        ids = [[vocab.setdefault(t, len(vocab)) for t in toks] or [0] for toks in token_lists]
        bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
        return cls(bm25)

    @classmethod
    def load(cls, path: Path) -> Field:
        import bm25s

        return cls(bm25s.BM25.load(str(path), show_progress=False, verbosity=0))

    def save(self, path: Path) -> None:
        self.bm25.save(str(path), show_progress=False)

    def token_id(self, token: str) -> int | None:
        tid = self.bm25.vocab_dict.get(token)
        return None if tid in (None, 0) else tid

    def idf(self, token: str) -> float:
        """BM25 (Lucene) idf; a token the corpus never uses gets the highest possible value."""
        tid = self.token_id(token)
        df = int(self._df[tid]) if tid is not None else 0
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, tokens: list[str]) -> np.ndarray:
        """Sum of each query token's precomputed BM25 column (a repeated token counts again, as in bm25s).
        One bincount instead of bm25s' np.add.at per query token; the same scores to float32 precision."""
        ids = [tid for t in tokens if (tid := self.token_id(t)) is not None]
        if not ids:
            return np.zeros(self.n, dtype=np.float32)
        spans = [(self._indptr[t], self._indptr[t + 1]) for t in ids]
        docs = np.concatenate([self._indices[a:b] for a, b in spans])
        weights = np.concatenate([self._data[a:b] for a, b in spans])
        return np.bincount(docs, weights=weights, minlength=self.n).astype(np.float32)


SPANS_FILE = "spans.jsonl"
SPANS_OFFSETS_FILE = "spans_offsets.npy"


class SparseIndex:
    """Two BM25 fields fused: Kiwi morphemes (precise) and character bigrams (slang, typos, spacing:
    "무장", "쿨감", "무의장막"). score = morph/max(morph) + bigram_weight · bigram/max(bigram)."""

    def __init__(
        self,
        chunks: list[Chunk],
        morph: Field,
        bigram: Field,
        tokenizer: KoreanTokenizer,
        bigram_weight: float = 1.0,
        class_boost: float = 0.0,
    ):
        self.chunks = chunks
        self.class_boost = class_boost
        self.morph = morph
        self.bigram = bigram
        self.tokenizer = tokenizer
        self.bigram_weight = bigram_weight
        self.n = len(chunks)
        self.position = {c.chunk_id: i for i, c in enumerate(chunks)}
        self.build_dir: Path | None = None  # set by load(): where stored token spans are read from
        self._span_offsets: np.ndarray | None = None
        self._by_doc: dict[str, list[int]] | None = None
        self._vocabulary: frozenset[str] | None = None
        self._cat = {
            name: np.array([getattr(c, name) or "" for c in chunks], dtype=object)
            for name in ("category1", "category2", "category3")
        }

    # --- building and loading ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        chunks: list[Chunk],
        morph_tokens: list[list[str]],
        bigram_tokens: list[list[str]],
        tokenizer: KoreanTokenizer,
        k1: float,
        b: float,
        bigram_weight: float,
    ) -> SparseIndex:
        return cls(
            chunks,
            Field.build(morph_tokens, k1, b),
            Field.build(bigram_tokens, k1, b),
            tokenizer,
            bigram_weight,
        )

    @classmethod
    def load(
        cls, build_dir: Path, tokenizer: KoreanTokenizer, bigram_weight: float = 1.0, class_boost: float = 0.0
    ) -> SparseIndex:
        chunks = [Chunk(**r) for r in iter_jsonl(build_dir / "chunks.jsonl")]
        index = cls(
            chunks,
            Field.load(build_dir / "sparse"),
            Field.load(build_dir / "sparse_bigram"),
            tokenizer,
            bigram_weight,
            class_boost,
        )
        index.build_dir = build_dir
        return index

    def save(self, build_dir: Path, spans: list[list[Span]] | None = None) -> None:
        self.morph.save(build_dir / "sparse")
        self.bigram.save(build_dir / "sparse_bigram")
        with open(build_dir / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in self.chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        # One line per chunk + byte offsets: answering reads 3 lines, not the whole file.
        if spans is not None:
            offsets = []
            with open(build_dir / SPANS_FILE, "wb") as f:
                for row in spans:
                    offsets.append(f.tell())
                    f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            np.save(build_dir / SPANS_OFFSETS_FILE, np.array(offsets, dtype=np.int64))

    def chunk_spans(self, position: int) -> list[Span] | None:
        """The chunk's Kiwi token spans stored at build time (None for an index built without them)."""
        if self.build_dir is None or not (self.build_dir / SPANS_FILE).exists():
            return None
        if self._span_offsets is None:
            self._span_offsets = np.load(self.build_dir / SPANS_OFFSETS_FILE)
        with open(self.build_dir / SPANS_FILE, "rb") as f:
            f.seek(int(self._span_offsets[position]))
            return [tuple(x) for x in json.loads(f.readline())]

    def doc_chunks(self, doc_id: str) -> list[int]:
        """Positions of a document's chunks, in reading order."""
        if self._by_doc is None:
            by_doc: dict[str, list[int]] = {}
            for i, c in enumerate(self.chunks):
                by_doc.setdefault(c.doc_id, []).append(i)
            self._by_doc = by_doc
        return self._by_doc.get(doc_id, [])

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every morpheme the guides use (what counts as a "known word" when reading a question)."""
        if self._vocabulary is None:
            self._vocabulary = frozenset(t for t in self.morph.bm25.vocab_dict if t)
        return self._vocabulary

    # --- querying -----------------------------------------------------------------------------------------
    def idf(self, token: str) -> float:
        return self.morph.idf(token)

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        if filters is None or filters.empty():
            return None
        m = np.ones(self.n, dtype=bool)
        if filters.category1:
            m &= self._cat["category1"] == filters.category1
        if filters.category2:
            m &= self._cat["category2"] == filters.category2
        if filters.category3:
            m &= np.array([filters.category3 in v for v in self._cat["category3"]], dtype=bool)
        return m

    def query_scores(self, query: str, filters: Filters | None = None) -> np.ndarray:
        """Fused sparse scores of every chunk for a query (0 where filtered out).

        Short forms are expanded ("무장" → "무의 장막"), and chunks of a class the question names ("드나",
        "섀댄") get `class_boost`: guides rarely repeat their class's nickname."""
        expanded = expand_query(query, self.vocabulary)
        m = _unit(self.morph.scores(self.tokenizer.tokenize(expanded)))
        b = _unit(self.bigram.scores(char_bigrams(expanded)))
        scores = m + self.bigram_weight * b
        boards = query_classes(query, self.vocabulary)
        if boards and self.class_boost:
            scores = scores + self.class_boost * np.isin(self._cat["category3"], boards) * (scores > 0)
        mask = self.mask(filters)
        return scores if mask is None else np.where(mask, scores, 0.0)

    def search(
        self, query: str, k: int = 5, filters: Filters | None = None, per_doc: bool = True
    ) -> list[Hit]:
        return top_hits(self.query_scores(query, filters), self.chunks, k, per_doc)


def _unit(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else x


def top_hits(scores: np.ndarray, chunks: list[Chunk], k: int, per_doc: bool) -> list[Hit]:
    """The k best positive-scoring chunks; per_doc keeps only each document's best chunk."""
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return []
    want = k * 4 if per_doc else k
    if positive.size > want:
        part = np.argpartition(-scores[positive], want)[:want]
        cand = positive[part]
    else:
        cand = positive
    order = cand[np.argsort(-scores[cand], kind="stable")]
    if per_doc and len(order) < len(positive) and len({chunks[i].doc_id for i in order}) < k:
        order = positive[np.argsort(-scores[positive], kind="stable")]  # rare: many chunks of few docs
    hits, seen = [], set()
    for i in order:
        c = chunks[i]
        if per_doc and c.doc_id in seen:
            continue
        seen.add(c.doc_id)
        hits.append(Hit(c, float(scores[i]), len(hits) + 1))
        if len(hits) == k:
            break
    return hits
