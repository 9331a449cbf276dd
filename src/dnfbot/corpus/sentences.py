"""Fast Korean-aware sentence boundaries by punctuation.

Guide articles often glue sentences together ("가시면 됩니다.만약 순서를…"), so a boundary is any . ! ? …
not between two digits ("7.38%" stays whole), plus the closing quotes/brackets that follow it.
"""

from __future__ import annotations

import re

_END_RE = re.compile(r"(?:(?<!\d)\.|\.(?!\d)|[!?。…]|(?<=[다요죠음함임됨])~+)+[\"'”’)\]」』]*")


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (not including the text's end)."""
    ends = [m.end() for m in _END_RE.finditer(text)]
    return [e for e in ends if e < len(text)]


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
