"""Tokenization, index round-trip, staleness, atomic builds, filters, refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dnfbot import NO_INFO_ANSWER
from dnfbot.config import Settings
from dnfbot.errors import IndexMissingError, InputError
from dnfbot.rag import RAG
from dnfbot.retrieval import store
from dnfbot.retrieval.index import build_index, is_stale, open_index
from dnfbot.retrieval.sparse import Filters, SparseIndex
from dnfbot.retrieval.tokenizer import get_tokenizer

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"


@pytest.fixture
def mini_index(tmp_path):
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    settings = Settings()
    index_dir = tmp_path / "index"
    build_index([corpus], index_dir, settings)
    return corpus, index_dir, settings


def test_tokenizer_keeps_content_morphemes_numbers_and_latin():
    tok = get_tokenizer()
    assert "장막" in tok.tokenize("장막의 비밀")  # the particle is not part of the term
    toks = tok.tokenize("MP과소모 세팅으로 1000골드를 벌었다")
    assert {"mp", "1000", "골드", "세팅"} <= set(toks)
    assert "를" not in toks and "으로" not in toks
    assert "아스라한" in tok.tokenize("아스라한 레이드")  # domain proper noun stays whole


def test_cached_query_tokens_are_copies_and_match_uncached():
    tok = get_tokenizer()
    q = "무의 장막 신수 추천해 줘 1000 MP"
    first = tok.tokenize(q)
    first.append("오염")  # a caller mutating its list must not change what the cache returns
    again = tok.tokenize(q)
    assert again == first[:-1]
    assert again == tok.tokenize_many([q])[0]  # the batch path never caches
    long_text = "장막 " * 300
    assert tok.tokenize(long_text) == tok.tokenize_many([long_text])[0]


def test_field_scores_equal_bm25s_including_repeated_tokens(mini_index):
    import numpy as np

    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    tokens = idx.tokenizer.tokenize("무의 장막 신수 추천 장막 없는낱말")
    ids = [t for x in tokens if (t := idx.morph.token_id(x)) is not None]
    assert len(ids) < len(tokens) and len(set(ids)) < len(ids)  # an unknown and a repeated token
    np.testing.assert_allclose(idx.morph.scores(tokens), idx.morph.bm25.get_scores_from_ids(ids), rtol=1e-6)


def test_index_round_trip_and_search(mini_index):
    corpus, index_dir, settings = mini_index
    idx, build = open_index(index_dir, settings)
    hits = idx.search("무의 장막 신수 추천", k=3)
    assert hits[0].chunk.doc_id == "0"
    r = settings.retrieval
    reloaded = SparseIndex.load(build.path, get_tokenizer(), r.bigram_weight, r.class_boost)
    again = reloaded.search("무의 장막 신수 추천", k=3)
    assert [(h.chunk.chunk_id, round(h.score, 5)) for h in hits] == [
        (h.chunk.chunk_id, round(h.score, 5)) for h in again
    ]


def test_unchanged_corpus_is_not_rebuilt_and_changed_corpus_is(mini_index):
    corpus, index_dir, settings = mini_index
    first = store.current_build(index_dir)
    assert build_index([corpus], index_dir, settings).rebuilt is False
    assert is_stale(first, settings) is False
    text = corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수")
    corpus.write_text(text, encoding="utf-8")
    assert is_stale(first, settings) is True
    rebuilt = []
    idx, build = open_index(index_dir, settings, on_rebuild=rebuilt.append)
    assert rebuilt and build.fingerprint != first.fingerprint
    assert idx.search("머랭", k=1)[0].chunk.doc_id == "0"
    assert not first.path.exists()  # the old build is cleaned up
    assert [p.name for p in index_dir.iterdir() if p.name.startswith("build-")] == [build.path.name]


def test_changed_chunk_settings_make_the_index_stale(mini_index):
    corpus, index_dir, settings = mini_index
    build = store.current_build(index_dir)
    assert is_stale(build, Settings(chunk={"size": 1000, "overlap": 100})) is True


def test_a_crashing_build_leaves_the_previous_index_live(mini_index, monkeypatch):
    corpus, index_dir, settings = mini_index
    before = store.current_build(index_dir)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(SparseIndex, "save", staticmethod(boom))
    with pytest.raises(RuntimeError):
        build_index([corpus], index_dir, settings, force=True)
    after = store.current_build(index_dir)
    assert after.path == before.path and (after.path / "chunks.jsonl").exists()
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-")]


def test_missing_index_says_how_to_build_it(tmp_path):
    with pytest.raises(IndexMissingError, match="dnfbot index build"):
        store.current_build(tmp_path / "nowhere")


def test_filters(mini_index):
    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    q = "입장 명성 조건"
    assert {h.chunk.doc_id for h in idx.search(q, k=5)} >= {"0", "1"}
    assert [h.chunk.doc_id for h in idx.search(q, k=5, filters=Filters(category2="레기온"))] == ["1"]
    assert [h.chunk.category1 for h in idx.search("세팅", k=5, filters=Filters(category1="장비"))] == ["장비"]
    assert [
        h.chunk.doc_id for h in idx.search("가이드 세팅", k=5, filters=Filters("직업", None, "소울브링어"))
    ] == ["4"]


def test_answers_with_sources_or_refuses_exactly(mini_index):
    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    rag = RAG(idx, settings)
    a = rag.ask("더스크 피로도 얼마나 들어?")
    assert a.answered and "30" in a.answer and a.sources[0]["doc_id"] == "2"
    assert set(a.sources[0]) == {"doc_id", "title", "part", "score", "n"}
    no = rag.ask("오늘 서울 날씨 어때?")
    assert no.answer == NO_INFO_ANSWER and no.answered is False and no.sources == []


def test_empty_and_huge_queries(mini_index):
    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    rag = RAG(idx, settings)
    with pytest.raises(InputError, match="empty question"):
        rag.ask("   ")
    huge = "더스크 피로도 " * 20000  # 160,000 characters: truncated, not an error or a hang
    assert rag.ask(huge).answered in (True, False)
    assert len(rag.search(huge)) >= 1


def test_char_bigrams_bridge_spacing_and_slang():
    from dnfbot.retrieval.tokenizer import char_bigrams

    assert char_bigrams("무의장막 MP 1000골드") == ["무의", "의장", "장막", "mp", "1000", "골드"]
    assert set(char_bigrams("무의 장막")) < set(char_bigrams("무의장막"))


def test_query_understanding_uses_the_category_table():
    from dnfbot.corpus.aliases import canonical_query, expand_query, query_classes

    assert query_classes("드나랑 같이 싸우는 용") == ["드래곤나이트 (타이런트 / 드레드노트)"]
    assert query_classes("남넨마스터 스킬트리") == ["넨마스터(남) (광호제 / 염황 광풍제월)"]
    assert expand_query("무장 물약 몇 개") == "무장 물약 몇 개 무의 장막"
    assert canonical_query("섀댄 쿨감") == "섀도우댄서 쿨타임 감소"


def test_class_named_in_question_boosts_its_guides(mini_index):
    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    plain = idx.query_scores("냉기의 사야 세팅")
    boosted = idx.query_scores("소울 냉기의 사야 세팅")
    soul = idx.position["4#1"]
    assert boosted[soul] > plain[soul]


def test_stored_token_spans_point_into_chunks_and_give_the_same_answer(mini_index):
    _, index_dir, settings = mini_index
    idx, _ = open_index(index_dir, settings)
    for pos, chunk in enumerate(idx.chunks):
        spans = idx.chunk_spans(pos)
        assert spans, chunk.chunk_id
        assert all(0 <= s < e <= len(chunk.text) for _, s, e in spans)
    stored = RAG(idx, settings).ask("더스크 피로도 얼마나 들어?")
    assert stored.answered
    idx.build_dir = None  # no stored spans: the passages are tokenized afresh
    assert RAG(idx, settings).ask("더스크 피로도 얼마나 들어?").answer == stored.answer
