"""(question, passage) pairs for embedder fine-tuning: `dnfbot data pairs`.

Two sources, one output format ({"query", "passage", "chunk_id", "doc_id", "split", "source"} per line):

- synth: question/answer records from `dnfbot synth qa` ({"id", "doc_id", "chunk_id", "question", …}); the
  passage is the chunk the question was written from, re-chunked from the corpus with the same settings.
- ict: no LLM at all — the inverse cloze task (Lee et al., 2019): a sentence of a chunk is the query, its chunk
  is the passage. Sentences are picked deterministically (hash order), `per_chunk` of them per chunk.

Passages are `title + "\\n" + text`, the text the dense index embeds. The train/valid split is a hash of the
question (default: held-out questions may ask about passages seen in training, as real user questions do) or of
the article (`split_by="doc"`: held-out articles are never seen), so it is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dnfbot.corpus.chunking import Chunk
from dnfbot.corpus.sentences import split_sentences
from dnfbot.errors import InputError
from dnfbot.io import iter_jsonl, write_jsonl

_HANGUL = re.compile(r"[가-힣]")


def _hash01(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def assign_split(key: str, valid_fraction: float) -> str:
    """'valid' for a stable `valid_fraction` share of keys, else 'train'."""
    return "valid" if _hash01(key) < valid_fraction else "train"


def _pair(query: str, chunk: Chunk, source: str) -> dict:
    from dnfbot.retrieval.dense import passage_text

    return {
        "query": query,
        "passage": passage_text(chunk),
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "source": source,
    }


def ict_pairs(
    chunks: list[Chunk], per_chunk: int = 3, min_chars: int = 20, max_chars: int = 160
) -> list[dict]:
    """Inverse-cloze pairs: up to `per_chunk` sentences of each chunk (Korean, min..max characters) as queries."""
    pairs = []
    for c in chunks:
        sents = {c.text[a:b].strip() for a, b in split_sentences(c.text)}
        sents = [s for s in sents if min_chars <= len(s) <= max_chars and len(_HANGUL.findall(s)) >= 8]
        sents.sort(key=lambda s: _hash01(f"{c.chunk_id}\0{s}"))
        pairs += [_pair(s, c, "ict") for s in sents[:per_chunk]]
    return pairs


def synth_pairs(paths: list[str | Path], chunks: list[Chunk]) -> tuple[list[dict], dict]:
    """Pairs from synthesised QA records; records whose chunk is not in the corpus are counted and skipped."""
    by_id = {c.chunk_id: c for c in chunks}
    pairs, missing, records = [], 0, 0
    for path in paths:
        for i, r in enumerate(iter_jsonl(path, allow_torn_tail=True), start=1):
            records += 1
            q = r.get("question")
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"{path}: record {i}: missing or empty field 'question'")
            if not r.get("chunk_id"):
                raise InputError(f"{path}: record {i}: missing field 'chunk_id'")
            c = by_id.get(str(r["chunk_id"]))
            if c is None:
                missing += 1
                continue
            pairs.append(_pair(" ".join(q.split()), c, "synth"))
    if records and not pairs:
        raise InputError(
            f"{paths[0]}: none of the {records} records' chunk_id is in the corpus; were they synthesised from "
            "this corpus with the same chunk size/overlap?"
        )
    return pairs, {"records": records, "missing_chunk": missing}


def split_pairs(pairs: list[dict], valid_fraction: float = 0.1, split_by: str = "question") -> list[dict]:
    if split_by not in ("question", "doc"):
        raise InputError(f"--split-by {split_by}: choose 'question' or 'doc'")
    seen, out = set(), []
    for p in pairs:
        if (p["query"], p["chunk_id"]) in seen:
            continue
        seen.add((p["query"], p["chunk_id"]))
        key = p["query"] if split_by == "question" else f"doc:{p['doc_id']}"
        out.append({**p, "split": assign_split(key, valid_fraction)})
    return out


def build_pairs(
    corpus: list[str | Path],
    out: str | Path,
    *,
    synth: list[str | Path] | None = None,
    ict_per_chunk: int = 0,
    valid_fraction: float = 0.1,
    split_by: str = "question",
    chunk_size: int = 3000,
    chunk_overlap: int = 250,
) -> dict:
    """Write the pairs file; returns counts."""
    from dnfbot.corpus import load_corpus
    from dnfbot.corpus.chunking import chunk_documents

    if not synth and ict_per_chunk <= 0:
        raise InputError(
            "give --synth FILE (synthesised questions) and/or --ict N (sentence queries per chunk)"
        )
    docs, _ = load_corpus([str(p) for p in corpus])
    chunks = chunk_documents(docs, chunk_size, chunk_overlap)
    pairs, stats = [], {"records": 0, "missing_chunk": 0}
    if synth:
        pairs, stats = synth_pairs(list(synth), chunks)
    if ict_per_chunk > 0:
        pairs += ict_pairs(chunks, ict_per_chunk)
    rows = split_pairs(pairs, valid_fraction, split_by)
    write_jsonl(out, rows)
    n_valid = sum(r["split"] == "valid" for r in rows)
    return {
        "out": str(out),
        "pairs": len(rows),
        "train": len(rows) - n_valid,
        "valid": n_valid,
        "chunks": len(chunks),
        "chunks_covered": len({r["chunk_id"] for r in rows}),
        "synth_records": stats["records"],
        "synth_missing_chunk": stats["missing_chunk"],
        "split_by": split_by,
    }
