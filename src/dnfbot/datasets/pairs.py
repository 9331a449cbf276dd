"""(question, passage) pairs for embedder fine-tuning: `dnfbot data pairs`.

Two sources, one output format ({"query", "passage", "chunk_id", "doc_id", "split", "source"} per line):

- synth: question/answer records from `dnfbot synth qa` ({"id", "doc_id", "chunk_id", "question", …}); the
  passage is the chunk the question was written from, re-chunked from the corpus with the same settings.
- ict: no LLM at all — the inverse cloze task (Lee et al., 2019): a sentence of a chunk is the query, its chunk
  is the passage. Sentences are picked deterministically (hash order), `per_chunk` of them per chunk.

Passages are `title + "\\n" + text`, the text the dense index embeds. The train/valid split is a hash of the
article (default, `split_by="doc"`: held-out articles and their passages are never trained on, so `eval
embedder` measures what fine-tuning generalises) or of the question (`split_by="question"`: other questions
about a held-out question's passage are trained on; `eval embedder` then scores only the valid pairs whose
article has no training pair), so it is stable across runs and machines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from dnfbot.corpus.chunking import Chunk
from dnfbot.corpus.sentences import split_sentences
from dnfbot.datasets.splits import assign_split, hash01
from dnfbot.errors import InputError
from dnfbot.io import iter_records, require_text, write_jsonl

if TYPE_CHECKING:
    from dnfbot.config import ChunkSettings

_HANGUL = re.compile(r"[가-힣]")


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
        sents.sort(key=lambda s: hash01(f"{c.chunk_id}\0{s}"))
        pairs += [_pair(s, c, "ict") for s in sents[:per_chunk]]
    return pairs


def synth_pairs(paths: list[str | Path], chunks: list[Chunk]) -> tuple[list[dict], dict]:
    """Pairs from synthesised QA records; records whose chunk is not in the corpus are counted and skipped."""
    by_id = {c.chunk_id: c for c in chunks}
    pairs, missing, records = [], 0, 0
    for path in paths:
        for where, r in iter_records(path, allow_torn_tail=True):
            records += 1
            q = require_text(r, "question", where)
            c = by_id.get(str(r.get("chunk_id") or require_text(r, "chunk_id", where)))
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


def split_pairs(pairs: list[dict], valid_fraction: float = 0.1, split_by: str = "doc") -> list[dict]:
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


def load_pairs(path: str | Path, split: str | None = None) -> list[dict]:
    """Pairs written by `build_pairs`; `split` keeps only records of that split (records without one count as
    train)."""
    out = []
    for where, r in iter_records(path):
        for f in ("query", "passage", "chunk_id"):
            require_text(r, f, where)
        if split is None or r.get("split", "train") == split:
            out.append(r)
    return out


def build_pairs(
    corpus: list[str | Path],
    out: str | Path,
    *,
    synth: list[str | Path] | None = None,
    ict_per_chunk: int = 0,
    valid_fraction: float = 0.1,
    split_by: str = "doc",
    chunk: ChunkSettings | None = None,
) -> dict:
    """Write the pairs file; returns counts. `chunk`: the settings the index was cut with (default 3000/250)."""
    from dnfbot.config import ChunkSettings
    from dnfbot.corpus import load_chunks

    if not synth and ict_per_chunk <= 0:
        raise InputError(
            "give --synth FILE (synthesised questions) and/or --ict N (sentence queries per chunk)"
        )
    chunks = load_chunks(corpus, chunk or ChunkSettings()).chunks
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
