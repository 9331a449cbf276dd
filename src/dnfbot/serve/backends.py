"""The answerers a server or the web page offers: one index, one RAG per generator back end.

`extractive` is always there (no model); the back end chosen by config/flags (hf or openai) is added beside it
and is the default. All share one passage-analysis cache (retrieval/passages.py), warmed ahead of the first
questions so answering reads no stored spans once warm.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot.generate.extractive import ExtractiveGenerator
from dnfbot.rag import RAG
from dnfbot.retrieval.passages import PassageCache


@dataclass
class Backends:
    """RAGs by back-end name over one shared index; `default` answers when a request names none."""

    rags: dict
    default: str
    models: dict[str, str | None] = field(default_factory=dict)  # back end → model name/path shown to users

    def get(self, name: str | None):
        return self.rags[name or self.default]

    @property
    def names(self) -> list[str]:
        return list(self.rags)

    def passage_cache(self) -> PassageCache:
        return self.rags["extractive"].passages

    def warm(self, stop: threading.Event | None = None) -> int:
        """Analyse every indexed passage ahead of the first questions; returns how many were analysed."""
        cache = self.passage_cache()
        done = 0
        for chunk in self.rags["extractive"].index.chunks:
            if stop is not None and stop.is_set():
                break
            if chunk.chunk_id not in cache:
                cache.get(chunk)
                done += 1
        return done


def open_backends(
    index_dir: Path | None = None,
    config: Path | None = None,
    backend: str | None = None,
    mode: str | None = None,
    **gen_overrides,
) -> Backends:
    """Load the index once; build the configured back end and, beside it, the extractive one."""
    from dnfbot.rag import open_rag

    base = open_rag(index_dir, config, backend, mode, **gen_overrides)
    name = base.settings.generation.backend
    # Both share the index, settings and retriever (sparse, dense or hybrid as configured).
    rag = RAG(base.index, base.settings, base.generator, base.retriever, base.passages)
    plain = ExtractiveGenerator(base.settings.answer.max_sentences)
    extractive = RAG(base.index, base.settings, plain, base.retriever, base.passages)
    rags = {"extractive": extractive}
    models: dict[str, str | None] = {"extractive": None}
    if name != "extractive":
        rags = {name: rag, **rags}
        models[name] = rag.settings.generation.model
    # Load Kiwi now (seconds), so the first question is not the one that waits for it.
    extractive.search("던파 공략")
    return Backends(rags, name, models)
