"""Category tags from one data table (data/categories.yaml), and class detection for shifted labels.

From about id 112 on, the guide corpus's class label belongs to the neighbouring article (a 소울브링어 guide is
labelled 웨펀마스터). The class used by filters therefore comes from the title and opening text when they
name a class clearly, and the disagreement with the label is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class ClassBoard:
    board: str  # the board label, e.g. "소울브링어 (소울테이커 / 다크로드)"
    base: str  # e.g. "소울브링어", "넨마스터(남)"
    terms: tuple[str, ...]  # every name that identifies this class in text
    nicknames: tuple[str, ...] = ()  # too ambiguous for relabelling articles; fine for reading questions


@dataclass(frozen=True)
class Categories:
    category1: str | None
    category2: str | None
    category3: str | None
    label: str  # the label as given by the source
    label_mismatch: bool = False  # the text names another class than the label


@dataclass(frozen=True)
class _Table:
    boards: tuple[dict, ...]
    classes: tuple[ClassBoard, ...]


# Overriding a source label needs the class in the title or named 3+ times in the opening text:
# one passing mention ("아이콘이 여스파와 바뀌었습니다") is not evidence.
MIN_OVERRIDE_SCORE = 3
_GENDER_RE = re.compile(r"^(.*?)\s*\((남|여)\)$")


def _class_terms(board: str, aliases: list[str], nicknames: list[str] = ()) -> ClassBoard:
    m = re.match(r"^(.*?)\s*\(([^()]*/[^()]*)\)\s*$", board)
    base, awakenings = (m.group(1).strip(), [a.strip() for a in m.group(2).split("/")]) if m else (board, [])
    terms = {base, *awakenings, *aliases}
    g = _GENDER_RE.match(base)
    if g:  # "넨마스터(남)" is also written "남넨마스터" and "넨마스터 (남)"
        name, sex = g.group(1).strip(), g.group(2)
        terms |= {
            name,
            f"{sex}{name}",
            f"{name} ({sex})",
            f"{sex}{name.replace(' ', '')}",
            name.replace(" ", ""),
        }
    terms = {t for t in terms if len(t) >= 2}
    return ClassBoard(
        board=board, base=base, terms=tuple(sorted(terms, key=len, reverse=True)), nicknames=tuple(nicknames)
    )


@lru_cache(maxsize=1)
def table() -> _Table:
    data = yaml.safe_load(resources.files("dnfbot").joinpath("data/categories.yaml").read_text("utf-8"))
    classes = tuple(
        _class_terms(c["board"], c.get("aliases") or [], c.get("nicknames") or []) for c in data["classes"]
    )
    return _Table(boards=tuple(data["boards"]), classes=classes)


def _normalise_label(label: str) -> str:
    return re.sub(r"\s+", " ", label.replace("\xa0", " ")).strip()


def board_rule(label: str) -> dict | None:
    for rule in table().boards:
        if ("exact" in rule and label == rule["exact"]) or (
            "prefix" in rule and label.startswith(rule["prefix"])
        ):
            return rule
    return None


def class_for_label(label: str) -> ClassBoard | None:
    compact = label.replace(" ", "")
    for c in table().classes:
        if label == c.board or compact == c.board.replace(" ", "") or label == c.base:
            return c
    return None


def class_scores(title: str, text: str, head_chars: int = 1500) -> dict[str, int]:
    """How strongly title (x10) and opening text name each class. Longer terms are counted first and
    blanked out, so '남넨마스터' does not also count as '넨마스터' for the other gender."""
    scores: dict[str, int] = {}
    for weight, source in ((10, title), (1, text[:head_chars])):
        for c in table().classes:
            s = source
            n = 0
            for term in c.terms:
                k = s.count(term)
                if k:
                    n += k
                    s = s.replace(term, " ")
            if n:
                scores[c.board] = scores.get(c.board, 0) + weight * n
    return scores


def detect_class(title: str, text: str) -> str | None:
    scores = class_scores(title, text)
    if not scores:
        return None
    best = max(scores.values())
    winners = [b for b, s in scores.items() if s == best]
    return winners[0] if len(winners) == 1 else None


def categorize(label: str, title: str, text: str) -> Categories:
    """Map a source label to (category1, category2, category3). Class labels are checked against the text."""
    label_n = _normalise_label(label)
    rule = board_rule(label_n)
    if rule:
        return Categories(rule["category1"], rule.get("category2"), label_n, label)
    labelled = class_for_label(label_n)
    if labelled is None and label_n:
        return Categories(None, None, label_n, label)  # an unknown board: kept as category3 only
    scores = class_scores(title, text)
    detected = detect_class(title, text)
    if labelled is None:  # blank label: trust the text if it is clear
        return Categories("직업" if detected else None, None, detected, label, label_mismatch=bool(detected))
    if (
        detected
        and detected != labelled.board
        and scores[detected] >= MIN_OVERRIDE_SCORE
        and scores[detected] > scores.get(labelled.board, 0)
    ):
        return Categories("직업", None, detected, label, label_mismatch=True)
    return Categories("직업", None, labelled.board, label)
