"""What the web page shows, without Streamlit: the sidebar's category tree and labels, and filters from picks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dnfbot.corpus.vocabulary import CATEGORY2
from dnfbot.retrieval.sparse import Filters

ALL = "전체"
BACKEND_LABELS = {
    "extractive": "발췌형 — 공략 원문에서 문장을 골라 답합니다 (모델 없음)",
    "hf": "로컬 언어 모델",
    "openai": "OpenAI 호환 서버",
}
_PREFIX_RE = re.compile(r"^\[[^\]]*\]\s*")


@dataclass
class CategoryTree:
    """Boards present in the index: 공략 by kind (레이드/레기온/기타 던전), 장비 boards, 직업 class boards."""

    dungeons: dict[str, list[str]] = field(default_factory=dict)
    equipment: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


def category_tree(chunks) -> CategoryTree:
    tree = CategoryTree({c2: [] for c2 in CATEGORY2})
    seen = set()
    for c in chunks:
        key = (c.category1, c.category2, c.category3)
        if key in seen or not c.category3:
            continue
        seen.add(key)
        if c.category1 == "공략" and c.category2 in tree.dungeons:
            tree.dungeons[c.category2].append(c.category3)
        elif c.category1 == "장비":
            tree.equipment.append(c.category3)
        elif c.category1 == "직업":
            tree.classes.append(c.category3)
    for boards in (*tree.dungeons.values(), tree.equipment, tree.classes):
        boards.sort(key=board_label)
    return tree


def board_label(board: str) -> str:
    """'[레이드] 아스라한 : 무의 장막' → '아스라한 : 무의 장막'; class boards stay as they are."""
    return _PREFIX_RE.sub("", board).strip() or board


def filters_for(category1: str | None, category2: str | None = None, category3: str | None = None) -> Filters:
    """Sidebar picks → retrieval filters; '전체' (or nothing) at a level means no filter from there down."""
    pick = [v if v and v != ALL else None for v in (category1, category2, category3)]
    c1, c2, c3 = pick
    if c1 is None:
        return Filters()
    if c1 != "공략":
        c2 = None
    return Filters(c1, c2, c3)


def filters_caption(f: Filters) -> str:
    if f.empty():
        return "모든 공략에서 찾습니다."
    parts = [p for p in (f.category1, f.category2, board_label(f.category3) if f.category3 else None) if p]
    return "검색 범위: " + " › ".join(parts)


def backend_label(name: str, model: str | None = None) -> str:
    base = BACKEND_LABELS.get(name, name)
    return f"{name} · {base}" + (f" ({model})" if model else "")
