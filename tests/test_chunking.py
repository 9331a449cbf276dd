"""Chunk boundaries and offsets."""

from __future__ import annotations

import pytest

from dnfbot.corpus import Document
from dnfbot.corpus.chunking import chunk_document, split_text
from dnfbot.corpus.sentences import split_sentences


def _text(n_paragraphs=12, sentences=9):
    paras = []
    for p in range(n_paragraphs):
        paras.append(
            "".join(
                f"{p}번 문단의 {s}번째 문장은 보상 {s * 1000}골드에 관한 설명입니다."
                for s in range(sentences)
            )
        )
    return "\n\n".join(paras)


def test_offsets_are_exact_and_chunks_cover_the_text():
    text = _text()
    doc = Document("d1", "제목", text, "공략", "레이드", "[레이드] 바칼")
    chunks = chunk_document(doc, size=600, overlap=80)
    assert len(chunks) > 3
    for i, c in enumerate(chunks, 1):
        assert text[c.start : c.end] == c.text
        assert len(c.text) <= 600
        assert c.part == i and c.chunk_id == f"d1#{i}"
        assert (c.category1, c.category2, c.category3) == ("공략", "레이드", "[레이드] 바칼")
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_overlap_is_bounded_and_cuts_prefer_paragraphs_then_sentences():
    text = _text()
    spans = split_text(text, size=600, overlap=80)
    for (_a1, b1), (a2, _) in zip(spans, spans[1:], strict=False):
        assert 0 <= b1 - a2 <= 80  # neighbours share at most `overlap` characters
        assert (
            text[b1 - 1] in ".\n" or text[b1 : b1 + 2] == "\n\n" or b1 == len(text)
        )  # sentence/paragraph end


def test_no_cut_inside_a_number_and_default_sizes():
    text = "수치는 7.38% 증가합니다. " * 400
    spans = split_text(text)  # defaults: 3000 / 250
    assert all(b - a <= 3000 for a, b in spans)
    for _a, b in spans:
        assert not text[b - 1].isdigit() or b == len(text)


def test_sentence_splitter_handles_glued_korean_sentences():
    text = "가시면 됩니다.만약 틀리면 7.38% 손해입니다!정말요?네요"
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "가시면 됩니다.",
        "만약 틀리면 7.38% 손해입니다!",
        "정말요?",
        "네요",
    ]


def test_overlap_must_be_smaller_than_size():
    with pytest.raises(ValueError):
        split_text("가나다", size=100, overlap=100)
