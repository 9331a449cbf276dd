"""Multi-turn: which past turns the generator sees, and the retrieval query folded from the conversation."""

from __future__ import annotations

import re

from dnfbot.corpus import aliases
from dnfbot.errors import InputError

# A question that leans on the previous turn by its wording ("그럼 하드는?", "걔 스킬트리는?", "2넴은?").
_REFERS_BACK_RE = re.compile(
    r"^(그럼|그러면|그거|그건|그걸|이거|이건|거기|걔|얘|그\s|저거|그리고|또|그담|다음|그다음)|(은|는|요)\?*$"
)
_MAX_FOLD = 3  # at most this many earlier questions are walked back for the topic
WEAK_QUESTION = 2.5  # total concept weight below which a question without a topic leans on the earlier one


def recent_history(history: list[dict], turns: int) -> list[dict]:
    """The last `turns` user+assistant exchanges."""
    return history[-2 * turns :] if turns > 0 else []


def _in_slot(c, slot: frozenset[str]) -> bool:
    return c.text in slot or any(t in slot for v in c.variants for t in v)


def _is_topic(c) -> bool:
    topics = {"".join(t.split()) for t in aliases.table().topics}
    return bool(c.boards) or "".join(c.text.split()) in topics or any(w in topics for w in c.surfaces)


def has_topic(query) -> bool:
    """Whether a question names what it is about (a dungeon, raid, system or class)."""
    return any(_is_topic(c) for c in query.concepts)


def refers_back(question: str, query) -> bool:
    """Worded as a follow-up ("그럼 …", "걔 …", "…은?") and naming no topic of its own."""
    return bool(_REFERS_BACK_RE.search(question.strip())) and not has_topic(query)


def earlier_topic(query, history: list[dict], read_query) -> tuple[str, str]:
    """The words of the earlier questions this one leans on: their concepts (never their question words), back
    to the last question that named a topic, minus any that fill a slot the new question fills itself
    ("바칼 하드 입장 명성" + "그럼 노말은?" → "바칼 입장 명성"), and the questions they come from."""
    slots = [s for s in aliases.table().slots if any(_in_slot(c, s) for c in query.concepts)]
    mine = {c.text for c in query.concepts}
    has_number = any(c.text.isdigit() for c in query.concepts)  # "3단" → "2단은?": the new number replaces it
    words: list[str] = []
    used: list[str] = []
    previous = [str(t.get("content") or "").strip() for t in history if t.get("role") == "user"]
    for text in list(reversed(previous))[:_MAX_FOLD]:
        if not text:
            continue
        used.insert(0, text)
        prev = read_query(text)
        keep = [
            c.text
            for c in prev.concepts
            if c.text not in mine
            and not any(_in_slot(c, s) for s in slots)
            and not (has_number and c.text.isdigit())
        ]
        words = [w for w in keep if w not in words] + words
        if has_topic(prev):
            break
    return " ".join(words), " ".join(used)


def fold_follow_up(question: str, history: list[dict], alone, read, passes, read_query):
    """Decide from the question's own evidence whether it is a follow-up, and if so read it with the earlier
    topic folded in. `alone` is the question read on its own, `read(topic, earlier)` reads it with a topic and
    the earlier questions it came from, `passes`
    is the evidence gate and `read_query` reads a text into concepts; returns the reading to answer from.

    A question that passes the gate on its own and does not refer back stands alone, however short it is. One
    that refers back, or fails alone, is read again with the earlier topic; that reading wins if it passes."""
    query, ev = alone[1], alone[5]
    if query.chitchat:
        return alone
    cue = refers_back(question, query)
    weak = sum(c.weight for c in query.concepts) < WEAK_QUESTION  # "룬은 어디에 몰아?": one common word
    if not cue and (has_topic(query) or (passes(ev, query) and not weak)):
        return alone  # it names its own topic, or stands on its own: never mixed with an earlier one
    topic, asked_before = earlier_topic(query, history, read_query)
    if not topic:
        return alone
    folded = read(topic, asked_before)
    return folded if passes(folded[5], folded[1]) else alone


def message_text(content) -> str:
    """OpenAI message content: a string, or a list of parts of which the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    raise InputError("messages: content must be a string or a list of parts")


def split_messages(messages: list[dict]) -> tuple[str, list[dict]]:
    """OpenAI-style messages → (question, history). The last message is the question and must be the user's;
    earlier user/assistant turns are the history. System prompts are ignored: the RAG template's rules hold."""
    if not messages:
        raise InputError("messages: at least one message is required")
    last = messages[-1]
    if last.get("role") != "user":
        raise InputError("messages: the last message must have role 'user'")
    question = message_text(last.get("content")).strip()
    if not question:
        raise InputError("messages: the last user message is empty")
    history = [
        {"role": m["role"], "content": message_text(m.get("content"))}
        for m in messages[:-1]
        if m.get("role") in ("user", "assistant")
    ]
    return question, history
