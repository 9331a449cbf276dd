"""Multi-turn: which past turns the generator sees, and the retrieval query folded from the conversation."""

from __future__ import annotations

import re

from dnfbot.errors import InputError

# A follow-up that leans on the previous turn ("그럼 하드는?", "걔 스킬트리는?") needs its subject back.
_FOLLOW_UP_RE = re.compile(r"^(그럼|그러면|그거|그건|이거|이건|거기|걔|그 |저거|그리고|또)|(은|는)\?$")
_SHORT = 12
_MAX_FOLD = 3  # at most this many earlier questions are folded in ("A" → "그럼 B는?" → "C는?")


def recent_history(history: list[dict], turns: int) -> list[dict]:
    """The last `turns` user+assistant exchanges."""
    return history[-2 * turns :] if turns > 0 else []


def is_follow_up(question: str) -> bool:
    q = question.strip()
    return len(q) <= _SHORT or bool(_FOLLOW_UP_RE.search(q))


def retrieval_query(question: str, history: list[dict], enabled: bool = True) -> str:
    """The question, prefixed with the earlier user questions it leans on.

    A short or referring follow-up gets the previous user question; if that one was itself a follow-up, the one
    before it too, back to the last standalone question (at most _MAX_FOLD), oldest first."""
    if not enabled or not history or not is_follow_up(question):
        return question
    previous = [str(t.get("content") or "") for t in history if t.get("role") == "user"]
    folded: list[str] = []
    for q in reversed(previous):
        if not q.strip():
            continue
        folded.insert(0, q.strip())
        if not is_follow_up(q) or len(folded) >= _MAX_FOLD:
            break
    return " ".join([*folded, question]) if folded else question


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
