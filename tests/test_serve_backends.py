"""Backends: every back end shares one index and one passage-analysis cache, warmed ahead of questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnfbot.rag import RAG
from dnfbot.serve.backends import open_backends
from support.guide_index import mini_index


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return mini_index(tmp_path_factory.mktemp("serve_backends"))


def test_backends_share_the_cache_and_answer_like_a_plain_rag(index_dir):
    b = open_backends(index_dir)
    rag = b.get("extractive")
    assert b.names == ["extractive"] and b.default == "extractive"
    cache = b.passage_cache()
    warmed = b.warm()
    assert (
        warmed == len(rag.index.chunks) == len(cache) and b.warm() == 0
    )  # the second pass has nothing to do
    plain = RAG(rag.index, rag.settings)  # its own, cold cache
    for q in ["더스크 피로도 얼마나 들어?", "무의 장막 신수 추천", "커스텀 출혈 세팅"]:
        assert rag.ask(q).to_dict() == plain.ask(q).to_dict(), q


def test_cache_is_bounded(index_dir):
    from dnfbot.retrieval.passages import PassageCache

    b = open_backends(index_dir)
    index = b.get(None).index
    cache = PassageCache(lambda c: index.chunk_spans(index.position[c.chunk_id]), max_entries=2)
    for c in index.chunks[:5]:
        cache.get(c)
    assert len(cache) == 2 and index.chunks[4].chunk_id in cache and index.chunks[0].chunk_id not in cache
