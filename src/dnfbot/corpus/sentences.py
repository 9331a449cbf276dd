"""Fast Korean-aware sentence boundaries, and which sentences are page furniture rather than prose.

A boundary is any . ! ? … not between two digits ("7.38%" stays whole), plus the closing quotes/brackets that
follow it, and every line break (cleaning puts the scraper's lost breaks back, see corpus/clean.py). A list
number ("…바랍니다1. 입장명성", "바뀌며2) A칸의") starts a new sentence instead of ending one.

`junk_kind` names the sentences a reader must never get as an answer: tables of contents and runs of numbered
headings ("목차0. 캐릭터 특징1. 추천 스킬트리2. …"), "Ctrl+F" hints, article changelogs ("23.07.18 던담딜
수정23.08.30 패치 …") and link dumps ("액션쾌감!! 던전앤파이터! (nexon.com)"). Retrieval still indexes them.
`is_heading` marks short label-like lines ("3. 캐릭터 스킬 트리", "[버서커 소개]"), which the answerer only
penalises: a heading can carry the asked name.
"""

from __future__ import annotations

import re

_END_RE = re.compile(r"(?:(?<!\d)\.|\.(?!\d)|[!?。…]|(?<=[다요죠음함임됨])~+)+[\"'”’)\]」』]*")
# "3.", "2)", "3-1." before a word: an item number, not the end of a sentence ("7.38", "1.5초" never match).
_LIST_NUMBER_RE = re.compile(r"(?<![\d.,\-~/:+(])\d{1,2}(?:-\d{1,2})?[.)](?=\s?[가-힣A-Za-z\[(<])")

_TOC_WORD_RE = re.compile(r"목차|(?:가이드|공략|글)\s*차례|^\W*차례\W*$")
_NUMBERED_ITEM_RE = re.compile(r"(?:^|(?<=[^\d.,:~/%+x*]))\d{1,2}\s?[.)]\s?(?=[가-힣A-Za-z\[(<])")
_CTRL_F_RE = re.compile(r"ctrl\s*\+?\s*f\b", re.IGNORECASE)
_DATE_RE = re.compile(r"(?<![\d.])(?:\d{2}|\d{4})\.\d{1,2}\.\d{1,2}\.?(?![\d%])")
_EDIT_NOTE_RE = re.compile(
    r"(?<![\d.])\d{1,2}\.\d{1,2}\.?\s?[^\d.%초배]{0,15}?(?:수정|갱신|작성|추가|반영|패치|삭제|개정|업데이트|최신화)"
)
_LINK_RE = re.compile(r"\((?:[a-z0-9-]+\.)+(?:com|net|xyz|kr|io|gg|co|me)\)|액션쾌감!+\s*던전앤파이터", re.I)
# How a Korean sentence ends when it says something (…다, …요, …음/함/됨/임, …죠); a heading does not.
_PREDICATE_END_RE = re.compile(r"(?:[다요죠음함됨임네까지]|니다만|[가-힣]고)[\s.!?~…\"'”’)\]」』]*$")
HEADING_MAX_CHARS = 30


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (not including the text's end); a list number counts
    as a boundary before it."""
    numbers = {m.end(): m.start() for m in _LIST_NUMBER_RE.finditer(text)}
    ends = [numbers.get(m.end(), m.end()) for m in _END_RE.finditer(text)]
    ends += numbers.values()
    return sorted({e for e in ends if 0 < e < len(text)})


def split_sentences(text: str, min_chars: int = 2) -> list[tuple[int, int]]:
    """(start, end) spans of sentences, split on sentence ends and line breaks, whitespace trimmed."""
    cuts = sorted({0, len(text), *sentence_ends(text), *(m.end() for m in re.finditer(r"\n", text))})
    spans = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b - a >= min_chars:
            spans.append((a, b))
    return spans


def junk_kind(sentence: str) -> str | None:
    """'toc', 'ctrl_f', 'changelog' or 'links' for page furniture that is never an answer; None for prose."""
    if _CTRL_F_RE.search(sentence):
        return "ctrl_f"
    if _TOC_WORD_RE.search(sentence) or len(_NUMBERED_ITEM_RE.findall(sentence)) >= 3:
        return "toc"
    if len(_DATE_RE.findall(sentence)) + len(_EDIT_NOTE_RE.findall(sentence)) >= 2:
        return "changelog"
    if _LINK_RE.search(sentence):
        return "links"
    return None


def is_heading(sentence: str) -> bool:
    """A short line that labels what follows instead of saying something ("4.추천 탈리스만 /룬", "-마치며-")."""
    s = sentence.strip()
    return len(s) <= HEADING_MAX_CHARS and not _PREDICATE_END_RE.search(s)


def junk_counts(text: str) -> dict[str, int]:
    """How many sentences of each junk kind a text has (reported by `dnfbot corpus check`)."""
    counts: dict[str, int] = {}
    for a, b in split_sentences(text):
        kind = junk_kind(text[a:b])
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts
