"""Integration on the real guide corpus (../shared); skipped cleanly when it is absent."""

from __future__ import annotations

import pytest

from dnfbot import NO_INFO_ANSWER
from dnfbot.config import Settings
from dnfbot.rag import RAG
from dnfbot.retrieval.index import build_index, open_index
from dnfbot.retrieval.sparse import Filters

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def rag(guide_corpus_path, tmp_path_factory):
    settings = Settings()
    index_dir = tmp_path_factory.mktemp("guide_index")
    result = build_index([guide_corpus_path], index_dir, settings)
    assert result.build.manifest["documents"] == 260
    idx, _ = open_index(index_dir, settings)
    return RAG(idx, settings)


@pytest.mark.parametrize(
    "question, gold",
    [
        ("아스라한 무의 장막 신수 뭐 데려가?", {"0", "1", "2", "7"}),
        ("소울브링어 출혈 세팅 가이드", {"112"}),
        ("남넨마스터 스킬트리 추천", {"128"}),
    ],
)
def test_known_questions_find_their_articles(rag, question, gold):
    docs = [h.chunk.doc_id for h in rag.search(question, 5)]
    assert gold & set(docs), docs


def test_class_filter_uses_corrected_labels(rag):
    hits = rag.search("가이드 스킬", 5, Filters("직업", None, "소울브링어"))
    assert hits and all(h.chunk.category3.startswith("소울브링어") for h in hits)
    assert "112" in {h.chunk.doc_id for h in hits}  # labelled 웨펀마스터 in the source


def test_refuses_off_topic_questions(rag):
    for q in ["오늘 서울 날씨 어때?", "비트코인 시세 알려줘"]:
        a = rag.ask(q)
        assert a.answer == NO_INFO_ANSWER and not a.answered


def test_dev_set_quality_targets(rag):
    """The issue's quality targets on eval/dev.jsonl (tuned on this set: see eval/README.md)."""
    from pathlib import Path

    from dnfbot.eval.retrieval import evaluate, load_devset

    r = evaluate(rag, load_devset(Path(__file__).parents[1] / "eval" / "dev.jsonl"), k=5)
    assert r["recall@5"] >= 0.95 and r["mrr@5"] >= 0.85
    assert r["answer_hit"] >= 0.68
    assert r["refusal_accuracy"] >= 0.90 and r["false_refusal"] <= 0.06


def test_greetings_get_a_self_introduction_not_a_snippet(rag):
    from dnfbot.rag import SELF_INTRO

    for q in ["안녕", "ㅎㅇ", "너 누구야?", "고마워"]:
        a = rag.ask(q)
        assert a.answer == SELF_INTRO and not a.answered and a.sources == [] and a.kind == "chitchat", q


def test_alias_questions_are_answered(rag):
    # "이스핀즈" used to become "이스이스핀즈" and be refused.
    a = rag.ask("이스핀즈 공략 간단하게 알려줘")
    assert a.answered and any("이스핀즈" in s["title"] for s in a.sources)
    a = rag.ask("개전 명성컷 얼마임")
    assert a.answered


def test_every_cited_sentence_is_verbatim_in_its_source_chunk(rag):
    chunks = {(c.doc_id, c.part): c.text for c in rag.index.chunks}
    for q in [
        "무장 노말 명성컷 얼마임",
        "어둑섬 해방 입장 명성 얼마?",
        "팔라딘 디바인 실드 쓰면 받는 피해 얼마나 줄어?",
    ]:
        a = rag.ask(q)
        assert a.answered and a.sentences, q
        by_n = {s["n"]: s for s in a.sources}
        assert set(by_n) == {s["source"] for s in a.sentences}  # every listed source contributed
        for s in a.sentences:
            src = by_n[s["source"]]
            doc_text = " ".join(t for (d, _), t in chunks.items() if d == src["doc_id"])
            assert s["text"] in doc_text, (q, s["text"])
            assert f"{s['text']} [{s['source']}]" in a.answer
        assert len(a.answer) <= 420  # at most ~350 characters of sentences plus their markers


def test_a_follow_up_borrows_the_topic_and_never_repeats(rag):
    q1 = "이면경계 익스퍼트 명성 얼마예요?"
    a1 = rag.ask(q1)
    assert a1.answered and "51,527" in a1.answer
    history = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1.answer}]
    a2 = rag.ask("노멀은요?", history=history)
    assert a2.answered and "44,872" in a2.answer and "익스퍼트" not in a2.query
    assert not {s["text"] for s in a2.sentences} & {s["text"] for s in a1.sentences}


def test_a_short_new_question_is_not_mixed_with_an_unrelated_one(rag):
    q1 = "버퍼 귀걸이 뭐 껴?"
    history = [{"role": "user", "content": q1}, {"role": "assistant", "content": rag.ask(q1).answer}]
    a = rag.ask("무장 코인 몇개?", history=history)
    assert a.answered and a.query == "무장 코인 몇개?" and "2개" in a.answer


def test_answers_on_players_questions(rag):
    """Measured on the test half of eval/players.jsonl (the tune half chose the settings): see
    docs/benchmarks.md for the numbers; the bounds here sit a little below them."""
    from pathlib import Path

    from dnfbot.eval.answers import evaluate_answers
    from dnfbot.eval.retrieval import load_devset

    r = evaluate_answers(rag, load_devset(Path(__file__).parents[1] / "eval" / "players.jsonl"), "test")
    o = r["overall"]
    assert o["answer_hit"] >= 0.65 and o["false_refusal"] <= 0.10
    assert r["by_kind"]["slang"]["answer_hit"] >= 0.60 and r["by_kind"]["slang"]["false_refusal"] <= 0.20
    assert r["offtopic_refused"] >= 0.85
    assert o["glued"] <= 0.03 and o["junk"] <= 0.03 and o["repeated"] == 0 and o["cut"] == 0
    assert o["median_chars"] <= 350 and o["contributed"] == 1.0


def test_evidence_reranking_ranks_players_gold_articles_higher(rag):
    """MRR@5 over articles on the players' answerable questions (both splits), BM25 alone vs BM25 + evidence
    re-ranking; measured +0.05–0.06 (docs/dense.md "Re-ranking by evidence")."""
    from pathlib import Path

    from dnfbot.eval.retrieval import load_devset
    from dnfbot.retrieval.fusion import gold_ranks, quality

    items = [it for it in load_devset(Path(__file__).parents[1] / "eval" / "players.jsonl") if it.answerable]
    off_settings = rag.settings.model_copy(deep=True)
    off_settings.retrieval.rerank_candidates = 0
    off = RAG(rag.index, off_settings, passages=rag.passages)
    gold = [it.gold_doc_ids for it in items]
    before, after = (
        quality(gold_ranks([[h.chunk.doc_id for h in r.search(it.question, 5)] for it in items], gold, 5))
        for r in (off, rag)
    )
    assert after["recall"] >= before["recall"]
    assert after["mrr"] >= before["mrr"] + 0.03, (before, after)
