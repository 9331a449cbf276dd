"""BM25 over Kiwi morphemes (bm25s), with metadata filters and per-term evidence for the answerer."""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
from collections.abc import Iterable
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
    def build(cls, token_lists: Iterable[list[str]], k1: float, b: float) -> Field:
        builder = FieldBuilder()
        for toks in token_lists:
            builder.add(toks)
        return builder.build(k1, b)

    @classmethod
    def load(cls, path: Path) -> Field:
        import bm25s

        field = cls(bm25s.BM25.load(str(path), show_progress=False, verbosity=0))
        n_vocab = len(field.bm25.vocab_dict)
        if (
            field._indptr.ndim != 1
            or len(field._indptr) != n_vocab + 1
            or len(field._data) != len(field._indices)
            or int(field._indptr[-1]) != len(field._data)
            or (len(field._indices) and int(field._indices.max()) >= field.n)
        ):
            raise ValueError(f"{path}: BM25 arrays do not fit together")
        return field

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


class FieldBuilder:
    """bm25s' Lucene BM25 matrix built from one document at a time, in numpy: each document is kept as its
    distinct token ids and counts (int32), never as a list of Python strings, so memory grows with the corpus'
    distinct (document, token) pairs only. Same vocabulary ids and bit-identical scores as bm25s.BM25.index
    (same operations in the same float order), saved and loaded by bm25s."""

    _BLOCK = 1 << 22  # pairs scored at once: bounds the float64 temporaries

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"": 0}  # id 0: the empty token an empty document gets (as before)
        self._ids: list[np.ndarray] = []
        self._tfs: list[np.ndarray] = []
        self._lens: list[int] = []

    def add(self, tokens: list[str]) -> None:
        vocab = self.vocab
        ids = [vocab.setdefault(t, len(vocab)) for t in tokens] or [0]
        u, c = np.unique(np.array(ids, dtype=np.int32), return_counts=True)
        self._ids.append(u)
        self._tfs.append(c.astype(np.int32))
        self._lens.append(len(ids))

    def build(self, k1: float, b: float) -> Field:
        import bm25s

        n, n_vocab = len(self._lens), len(self.vocab)
        lens = np.array(self._lens, dtype=np.int64)
        l_avg = lens.mean()  # bm25s: np.array([len(d) for d in corpus]).mean()
        voc = np.concatenate(self._ids) if n else np.zeros(0, dtype=np.int32)
        tf = np.concatenate(self._tfs) if n else np.zeros(0, dtype=np.int32)
        doc = np.repeat(np.arange(n, dtype=np.int32), [len(u) for u in self._ids])
        self._ids, self._tfs = [], []
        df = np.bincount(voc, minlength=n_vocab)
        idf = np.zeros(n_vocab, dtype=np.float32)
        for tid, d in enumerate(df.tolist()):  # math.log per token, exactly as bm25s' _build_idf_array
            if d:
                idf[tid] = math.log(1 + (n - d + 0.5) / (d + 0.5))
        norm = k1 * ((1 - b) + b * lens / l_avg)  # float64, per document (bm25s: per document, as a scalar)
        data = np.empty(len(voc), dtype=np.float32)
        for a in range(0, len(voc), self._BLOCK):
            z = slice(a, a + self._BLOCK)
            t = tf[z].astype(np.float32).astype(np.float64)  # bm25s: float32 counts, promoted to float64
            data[z] = idf[voc[z]].astype(np.float64) * (t / (norm[doc[z]] + t))
        order = np.argsort(voc, kind="stable")  # CSC: by token, documents ascending within a token
        scores = {
            "data": data[order],
            "indices": doc[order],
            "indptr": np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
            "num_docs": n,
        }
        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        bm25.scores = scores
        bm25.vocab_dict = self.vocab
        bm25.unique_token_ids_set = set(self.vocab.values())
        bm25.nonoccurrence_array = None
        return Field(bm25)


class SpansWriter:
    """spans.jsonl (one line of [token, start, end] per chunk) and spans_offsets.npy (each line's byte offset),
    written chunk by chunk so that a big corpus never holds all its spans at once."""

    def __init__(self, build_dir: Path):
        self.build_dir = Path(build_dir)
        self._f = open(self.build_dir / SPANS_FILE, "wb")  # noqa: SIM115 - closed in close()
        self._offsets: list[int] = []
        self._pos = 0

    def write(self, row: list[Span]) -> None:
        line = json.dumps(row, ensure_ascii=False).encode() + b"\n"
        self._offsets.append(self._pos)
        self._f.write(line)
        self._pos += len(line)

    def close(self) -> None:
        self._f.close()
        np.save(self.build_dir / SPANS_OFFSETS_FILE, np.array(self._offsets, dtype=np.int64))

    def abort(self) -> None:
        self._f.close()


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
        self.pinned_build = None  # set by index.open_index: the store.Build whose pin this index holds
        self._span_offsets: np.ndarray | None = None
        self._spans_fd: int | None = None
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
        """Load a build's sparse index; ValueError/InputError/OSError if its files are damaged or disagree
        (open_index turns that into IndexDamagedError). Stored spans are opened now and read by handle."""
        chunks = []
        for i, r in enumerate(iter_jsonl(build_dir / "chunks.jsonl"), start=1):
            try:
                chunks.append(Chunk(**r))
            except TypeError:
                raise ValueError(f"{build_dir / 'chunks.jsonl'}:{i}: not a chunk record") from None
        index = cls(
            chunks,
            Field.load(build_dir / "sparse"),
            Field.load(build_dir / "sparse_bigram"),
            tokenizer,
            bigram_weight,
            class_boost,
        )
        if not chunks or index.morph.n != len(chunks) or index.bigram.n != len(chunks):
            raise ValueError(f"{build_dir}: {len(chunks)} chunks, BM25 over {index.morph.n}/{index.bigram.n}")
        index.build_dir = build_dir
        index._open_spans()
        return index

    def _open_spans(self) -> None:
        spans = self.build_dir / SPANS_FILE
        if not spans.exists():
            return  # an index built without stored spans: answering tokenizes the passages
        offsets = np.load(self.build_dir / SPANS_OFFSETS_FILE)
        size = spans.stat().st_size
        if offsets.ndim != 1 or len(offsets) != self.n or (len(offsets) and int(offsets[-1]) >= size):
            raise ValueError(f"{spans}: offsets do not match the chunks")
        self._span_offsets = np.append(offsets.astype(np.int64), size)
        self._spans_fd = os.open(spans, os.O_RDONLY)  # read by handle (pread: safe from many threads)

    def __del__(self) -> None:
        fd = getattr(self, "_spans_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def save(self, build_dir: Path, spans: list[list[Span]] | None = None) -> None:
        self.morph.save(build_dir / "sparse")
        self.bigram.save(build_dir / "sparse_bigram")
        with open(build_dir / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in self.chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        # One line per chunk + byte offsets: answering reads 3 lines, not the whole file.
        if spans is not None:
            writer = SpansWriter(build_dir)
            for row in spans:
                writer.write(row)
            writer.close()

    def chunk_spans(self, position: int) -> list[Span] | None:
        """The chunk's Kiwi token spans stored at build time (None for an index built without them, or when
        the stored line cannot be read: the caller then tokenizes the chunk)."""
        fd = self._spans_fd
        if fd is None or self._span_offsets is None:
            return None
        a, b = int(self._span_offsets[position]), int(self._span_offsets[position + 1])
        try:
            if hasattr(os, "pread"):
                line = os.pread(fd, b - a, a)
            else:  # Windows: no pread; a fresh handle per read (the build's files stay, it is not POSIX)
                with open(self.build_dir / SPANS_FILE, "rb") as f:
                    f.seek(a)
                    line = f.read(b - a)
            return [tuple(x) for x in json.loads(line)]
        except (OSError, ValueError, TypeError):
            return None

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
