"""Corpus: documents from any supported source, cleaned and tagged; chunked for retrieval.

`load_chunks(paths, chunk)` is the only way from a corpus to passages: the index, `synth qa`, `data sft
--passages` and `data pairs` all call it, so a chunk id ("{doc_id}#{part}") means the same passage everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from dnfbot.corpus.chunking import Chunk, chunk_documents
from dnfbot.corpus.document import Document

if TYPE_CHECKING:
    from pathlib import Path

    from dnfbot.config import ChunkSettings
    from dnfbot.corpus.loaders import LoadReport, load_corpus

__all__ = ["Chunk", "Chunked", "Document", "LoadReport", "load_chunks", "load_corpus"]


class Chunked(NamedTuple):
    chunks: list[Chunk]
    documents: list[Document]
    report: LoadReport


def load_chunks(paths: list[str | Path] | str | Path, chunk: ChunkSettings) -> Chunked:
    """Load, clean and tag the corpus, then cut every document with the chunk settings (size, overlap)."""
    from dnfbot.corpus.loaders import load_corpus

    docs, report = load_corpus(paths)
    return Chunked(chunk_documents(docs, chunk.size, chunk.overlap), docs, report)


def __getattr__(name: str):
    # The loaders read the category table (yaml): imported on first use, so that the vocabulary and the chunk
    # types stay cheap to import (the CLI's --help reads them).
    if name in ("LoadReport", "load_corpus"):
        from dnfbot.corpus import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
