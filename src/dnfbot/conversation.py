"""Multi-turn: which past turns the generator sees, and the retrieval query folded from the conversation."""

from __future__ import annotations

import re

# A follow-up that leans on the previous turn ("그럼 하드는?", "걔 스킬트리는?") needs its subject back.
_FOLLOW_UP_RE = re.compile(r"^(그럼|그러면|그거|그건|이거|이건|거기|걔|그 |저거|그리고|또)|(은|는)\?$")
_SHORT = 12


def recent_history(history: list[dict], turns: int) -> list[dict]:
    """The last `turns` user+assistant exchanges."""
    return history[-2 * turns :] if turns > 0 else []


def retrieval_query(question: str, history: list[dict], enabled: bool = True) -> str:
    """The question, prefixed with the previous user question when this one is a short or referring follow-up."""
    if not enabled or not history:
        return question
    previous = next((t["content"] for t in reversed(history) if t.get("role") == "user"), None)
    if previous and (len(question) <= _SHORT or _FOLLOW_UP_RE.search(question.strip())):
        return f"{previous} {question}"
    return question
