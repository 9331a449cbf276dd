"""Evidence re-ranking (retrieval/rerank.py): the article whose sentences hold the question rises; refusals
stay the first stage's."""

from __future__ import annotations

import json

import pytest

from dnfbot.config import Settings
from dnfbot.rag import RAG
from dnfbot.retrieval.index import build_index, open_index

FILLER = "이 글은 여러 상황을 정리한 내용입니다. 파티 플레이에서 자주 나오는 질문을 모았습니다. "


def _corpus(tmp_path):
    # A repeats every term of the question, but never two in one place; B says the fact in one sentence.
    scattered = (
        "팔라딘은 파티를 지키는 직업입니다. " + FILLER + "디바인 실드 스킬은 방어 스킬입니다. " + FILLER
        + "슈아 유지가 중요합니다. " + FILLER + "팔라딘 스킬트리 추천. " + FILLER
        + "디바인 실드는 레벨마다 강해집니다. " + FILLER + "슈아가 없으면 위험합니다. "
        + FILLER + "가드 판정은 넉넉합니다. " + FILLER + "성공 확률이 높습니다. " + FILLER + "팔라딘 디바인 실드 슈아 정리."
    )  # fmt: skip
    focused = (
        "간단하게 팔라딘 세팅을 정리합니다. " + FILLER * 8
        + "디바인 실드로 가드에 성공하면 슈아가 3초 동안 붙습니다. " + FILLER * 8
    )  # fmt: skip
    other = "어둑섬 입장 명성은 단계마다 다릅니다. " + FILLER * 3
    data = {
        "title": {"0": "팔라딘 디바인 실드 슈아 가이드", "1": "간단하게 보는 팔라딘", "2": "어둑섬 기초"},
        "category1": {"0": "직업", "1": "직업", "2": "레기온"},
        "content": {"0": scattered, "1": focused, "2": other},
    }
    path = tmp_path / "guide.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def rags(tmp_path):
    settings = Settings()
    build_index([_corpus(tmp_path)], tmp_path / "index", settings)
    idx, _ = open_index(tmp_path / "index", settings)
    off = settings.model_copy(deep=True)
    off.retrieval.rerank_candidates = 0
    on = RAG(idx, settings)
    return on, RAG(idx, off, passages=on.passages)


QUESTION = "팔라딘 디바인 실드 가드 성공하면 슈아 몇초?"


def test_the_article_that_states_the_fact_rises_above_one_that_only_repeats_its_words(rags):
    on, off = rags
    first = [h.chunk.doc_id for h in off.search(QUESTION, 3)]
    assert first[:2] == ["0", "1"], first  # BM25 alone prefers the article that repeats the terms
    hits = on.search(QUESTION, 3)
    assert [h.chunk.doc_id for h in hits][:2] == ["1", "0"]
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert on.ask(QUESTION).sources[0]["doc_id"] == "1"  # the answer cites it first


def test_off_without_concepts_or_candidates_the_first_stage_order_stands(rags):
    on, off = rags
    hits = off.search(QUESTION, 3)
    q = on.reader.read(QUESTION)
    no_concepts = on.reader.read(QUESTION)
    no_concepts.concepts = []
    assert on.reranker.rerank(no_concepts, hits) == hits
    assert off.reranker.rerank(q, hits) == hits and not off.reranker.active
    assert off.reranker.fetch(3) == 3 and on.reranker.fetch(3) == on.settings.retrieval.rerank_candidates


def test_hits_beyond_the_candidates_keep_their_order_below_the_re_scored_ones(rags):
    on, off = rags
    hits = off.search(QUESTION, 3)
    on.reranker.candidates = 2
    out = on.reranker.rerank(on.reader.read(QUESTION), hits)
    assert [h.chunk.doc_id for h in out] == ["1", "0"] + [h.chunk.doc_id for h in hits[2:]]
    assert all(h.score <= out[1].score for h in out[2:])


def test_the_gate_judges_the_first_stage_articles(rags):
    """Re-ranking changes what is read first, never whether the bot answers: the coverage is the first
    stage's top articles' (searching ten articles for a window finds chance matches)."""
    on, off = rags
    on.settings.answer.top_chunks = off.settings.answer.top_chunks = 1
    for q in (QUESTION, "팔라딘 슈아 몇초", "어둑섬 입장 명성 얼마", "세라픽 페더 버프 몇퍼"):
        a_on, a_off = on.prepare(q), off.prepare(q)
        assert a_on.coverage == pytest.approx(a_off.coverage), q
        assert a_on.answered == a_off.answered, q
    # …while the answer is drawn from the re-ranked article
    assert on.prepare(QUESTION).hit_sources[0]["doc_id"] == "1"
