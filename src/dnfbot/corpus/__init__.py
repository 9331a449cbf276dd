"""Corpus: documents from any supported source, cleaned and tagged; chunked for retrieval."""

from dnfbot.corpus.document import Document
from dnfbot.corpus.loaders import LoadReport, load_corpus

__all__ = ["Document", "LoadReport", "load_corpus"]
