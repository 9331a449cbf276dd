"""The retrieval/answering dev set (eval/dev.jsonl) stays consistent with the guide corpus.

Every gold id must be an article that load_corpus keeps, and every short answer must appear verbatim in the
cleaned text of at least one gold article — so a cleaning change that breaks an answer fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dnfbot.corpus import load_corpus
from dnfbot.io import read_jsonl

DEV = Path(__file__).resolve().parents[1] / "eval" / "dev.jsonl"
FIELDS = {"id", "question", "gold_doc_ids", "answer", "answerable"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_jsonl(DEV)


@pytest.fixture(scope="module")
def corpus(guide_corpus_path):
    docs, report = load_corpus(guide_corpus_path)
    return {d.doc_id: d for d in docs}, report


def test_rows_have_exact_schema(rows):
    for r in rows:
        assert set(r) == FIELDS, r.get("id")
        assert isinstance(r["id"], str) and isinstance(r["question"], str) and r["question"].strip()
        assert isinstance(r["gold_doc_ids"], list) and all(isinstance(x, str) for x in r["gold_doc_ids"])
        assert isinstance(r["answerable"], bool)


def test_ids_and_questions_unique(rows):
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    questions = [r["question"].strip() for r in rows]
    assert len(questions) == len(set(questions))


def test_id_prefix_matches_kind(rows):
    for r in rows:
        assert re.fullmatch(r"q\d{3}" if r["answerable"] else r"u\d{3}", r["id"]), r["id"]


def test_counts(rows):
    answerable = [r for r in rows if r["answerable"]]
    assert len(answerable) >= 60
    assert len(rows) - len(answerable) >= 15


def test_unanswerable_have_no_gold(rows):
    for r in rows:
        if not r["answerable"]:
            assert r["gold_doc_ids"] == [] and r["answer"] is None, r["id"]


def test_answerable_have_short_answer_and_gold(rows):
    for r in rows:
        if r["answerable"]:
            assert r["gold_doc_ids"], r["id"]
            assert len(set(r["gold_doc_ids"])) == len(r["gold_doc_ids"]), r["id"]
            assert isinstance(r["answer"], str) and 1 <= len(r["answer"].strip()) <= 30, r["id"]


def test_gold_ids_are_kept_documents(rows, corpus):
    docs, report = corpus
    dropped = set(report.skipped_empty) | set(report.skipped_duplicate)
    for r in rows:
        for doc_id in r["gold_doc_ids"]:
            assert doc_id not in dropped, f"{r['id']}: gold {doc_id} is skipped by load_corpus"
            assert doc_id in docs, f"{r['id']}: gold {doc_id} is not a corpus document"


def test_answer_appears_verbatim_in_a_gold_document(rows, corpus):
    docs, _ = corpus
    missing = [
        r["id"]
        for r in rows
        if r["answerable"] and not any(r["answer"] in docs[d].text for d in r["gold_doc_ids"] if d in docs)
    ]
    assert missing == []


def test_questions_are_not_article_titles(rows, corpus):
    docs, _ = corpus
    titles = {d.title.strip() for d in docs.values()}
    assert [r["id"] for r in rows if r["question"].strip() in titles] == []
