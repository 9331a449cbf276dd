"""Player wording → guide wording: slang, short forms and class nicknames, matched as whole words.

One table (data/slang.yaml, plus the class names of data/categories.yaml) serves retrieval and the evidence gate
alike. A short form is read only where it stands as a word of its own:
- never inside its own full form or inside a longer known word: "핀즈" is not read in "이스핀즈", "크리"
  (크리에이터) not in "크리티컬", "미스" (미스트리스) not in "미스트";
- glued to the next word only when what follows is a particle/ending ("드나랑", "회랑은") or a known word
  ("닼나스킬트리"); `known` is the index vocabulary, so "known" means a word the guides use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

# Particles and endings that may follow a word without a space ("회랑은", "드나랑", "명성컷임?").
_PARTICLE_RE = re.compile(
    r"(?:은|는|이|가|을|를|의|도|로|으로|에|에서|에게|한테|랑|이랑|하고|과|와|만|까지|부터|보다|처럼|이나|나|요|임|인가|인데"
    r"|이야|야|이냐|냐|이에요|예요|에요|이죠|죠|임\?|함|됨|들|님|이란|란|이면|면|쪽|용|은요|는요|꺼|거)(?![가-힣])"
)
_HANGUL = re.compile(r"[가-힣]")
MAX_WORD = 12  # longest known word looked up around a match


@dataclass(frozen=True)
class Alias:
    key: str  # how players write it
    wordings: tuple[str, ...]  # how the guides write it
    boards: tuple[str, ...] = ()  # the class boards, for class names ("런처" names both genders' boards)


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    alias: Alias


@dataclass(frozen=True)
class SlangTable:
    aliases: tuple[Alias, ...]  # longest key first
    full_forms: frozenset[str]
    slots: tuple[frozenset[str], ...]
    question_words: frozenset[str]
    chitchat: tuple[str, ...]
    topics: frozenset[str]
    other_games: tuple[str, ...]


def _read_yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("dnfbot").joinpath(f"data/{name}").read_text("utf-8"))


@lru_cache(maxsize=1)
def table() -> SlangTable:
    from dnfbot.corpus.categories import table as class_table

    data = _read_yaml("slang.yaml")
    by_key: dict[str, Alias] = {}
    for key, wordings in (data.get("aliases") or {}).items():
        by_key[str(key)] = Alias(str(key), tuple(str(w) for w in wordings))
    classes: dict[str, Alias] = {}
    for c in class_table().classes:
        for term in (*c.terms, *c.nicknames):
            old = classes.get(term)
            wordings = () if term == c.base else (c.base,)  # "트러블슈터" is also read as 트러블 슈터
            if old is None:
                classes[term] = Alias(term, wordings, (c.board,))
            elif c.board not in old.boards:
                classes[term] = Alias(term, old.wordings + wordings, (*old.boards, c.board))
    for term, alias in classes.items():
        by_key.setdefault(term, alias)  # a slang entry wins over a class term spelt alike
    aliases = tuple(sorted(by_key.values(), key=lambda a: -len(a.key)))
    full = {w for a in aliases for w in a.wordings} | {a.key for a in aliases if a.boards and not a.wordings}
    return SlangTable(
        aliases=aliases,
        full_forms=frozenset(full),
        slots=tuple(frozenset(map(str, words)) for words in (data.get("slots") or {}).values()),
        question_words=frozenset(map(str, data.get("question_words") or [])),
        chitchat=tuple(map(str, data.get("chitchat") or [])),
        topics=frozenset(map(str, data.get("topics") or [])),
        other_games=tuple(sorted(map(str, data.get("other_games") or []), key=len, reverse=True)),
    )


def _word_bounds(text: str, i: int, j: int) -> tuple[int, int]:
    a, b = i, j
    while a > 0 and not text[a - 1].isspace():
        a -= 1
    while b < len(text) and not text[b].isspace():
        b += 1
    return a, b


def _inside_longer_word(text: str, i: int, j: int, known: Callable[[str], bool]) -> bool:
    """Whether text[i:j] is part of a longer word the guides (or the table) know: "핀즈" in "이스핀즈"."""
    a0, b0 = _word_bounds(text, i, j)
    for a in range(max(a0, j - MAX_WORD), i + 1):
        for b in range(j, min(b0, a + MAX_WORD) + 1):
            if (a, b) != (i, j) and known(text[a:b]):
                return True
    return False


def _free_edges(text: str, i: int, j: int, known: Callable[[str], bool] | None) -> bool:
    """A match glued to its neighbours counts only where the neighbours are words or particles themselves."""
    if i > 0 and _HANGUL.match(text[i - 1]):
        a, _ = _word_bounds(text, i, j)
        before = text[a:i]
        if known is None or not any(known(before[k:]) for k in range(len(before) - 1)):
            return False
    if j < len(text) and _HANGUL.match(text[j]):
        rest = text[j:].split(None, 1)[0]
        if _PARTICLE_RE.match(rest):
            return True
        if known is None or not any(known(rest[:k]) for k in range(2, min(len(rest), MAX_WORD) + 1)):
            return False
    return True


def find(text: str, known: Container[str] | None = None) -> list[Match]:
    """Every alias standing as a word in `text`, longest first, never overlapping."""
    t = table()
    lowered = text.lower()

    def is_known(w: str) -> bool:
        return w in t.full_forms or (known is not None and w.lower() in known)

    taken = [False] * len(text)
    matches = []
    for alias in t.aliases:
        key = alias.key.lower()
        start = lowered.find(key)
        while start >= 0:
            end = start + len(key)
            if (
                not any(taken[start:end])
                and not _inside_longer_word(lowered, start, end, is_known)
                and _free_edges(lowered, start, end, is_known if known is not None else None)
            ):
                matches.append(Match(start, end, alias))
                for k in range(start, end):
                    taken[k] = True
            start = lowered.find(key, start + 1)
    return sorted(matches, key=lambda m: m.start)


def expand_query(text: str, known: Container[str] | None = None) -> str:
    """The question plus the guide wording of each short form it uses ("무장 물약" → "무장 물약 무의 장막")."""
    extra = []
    for m in find(text, known):
        for w in m.alias.wordings:
            if w not in text and w not in extra:
                extra.append(w)
    return f"{text} {' '.join(extra)}" if extra else text


def canonical_query(text: str, known: Container[str] | None = None) -> str:
    """The question with each short form replaced by its first guide wording ("섀댄 쿨감" → "섀도우댄서 쿨타임 감소")."""
    out, last = [], 0
    for m in find(text, known):
        if not m.alias.wordings:
            continue
        out += [text[last : m.start], m.alias.wordings[0]]
        last = m.end
    return "".join(out) + text[last:]


def query_classes(text: str, known: Container[str] | None = None) -> list[str]:
    """Class boards a question names (full names, aliases or nicknames, as whole words)."""
    boards: list[str] = []
    for m in find(text, known):
        boards += [b for b in m.alias.boards if b not in boards]
    return boards


def other_game(text: str) -> str | None:
    """The other game a question names as a word of its own ("메이플 아델 6차", "로아 카멘"), if any."""
    for name in table().other_games:
        for m in re.finditer(re.escape(name), text):
            i, j = m.start(), m.end()
            before_ok = i == 0 or not _HANGUL.match(text[i - 1])
            after = re.match(r"\S*", text[j:]).group()  # the rest of the same word
            if before_ok and (not after or not _HANGUL.match(after[0]) or _PARTICLE_RE.match(after)):
                return name
    return None


def is_question_word(token: str) -> bool:
    return token in table().question_words


def user_words() -> list[str]:
    """Every slang key and guide wording, as words Kiwi must keep whole ("공속", "명성", "뎀감")."""
    words = set()
    for a in table().aliases:
        if a.boards:
            continue  # class names are added by the tokenizer from the class table
        for w in (a.key, *a.wordings):
            words.update(p for p in w.split() if len(p) >= 2 and _HANGUL.search(p))
    return sorted(words)
