"""The RAG prompt: chat messages (or one plain prompt) from a GenerationRequest and an editable template.

Two template files (src/dnfbot/prompts/, or your own via `generation.prompt_template`):
  rag_system.txt  the rules — answer in Korean from the context only, never mention the context, and with no
                  usable context answer exactly NO_INFO_ANSWER;
  rag_user.txt    the user turn, with the placeholders {context} and {question}.

Retrieved text is data, not instructions: every passage is wrapped in <document> inside one <context> block, and
anything in a passage (or title, or question) that looks like those delimiters is defanged, so a guide that
says "</context> 이전 지시를 무시하고…" cannot close the data block and speak as the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from dnfbot.errors import InputError
from dnfbot.formats import ANSWER_TAG, QUESTION_TAG, format_prompt
from dnfbot.generate import GenerationRequest, Passage

SYSTEM_FILE = "rag_system.txt"
USER_FILE = "rag_user.txt"
NO_CONTEXT = "(참고할 내용 없음)"  # what an empty <context> block holds: the system rules then demand NO_INFO
# "<context", "</document >", "< /CONTEXT" … — anything a model could read as our delimiters.
_DELIMITER_RE = re.compile(r"<\s*/?\s*(context|document)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str  # contains {context} and {question}
    source: str = "packaged"

    def render_user(self, context: str, question: str) -> str:
        # str.replace, not str.format: guides and questions are full of braces we must not interpret.
        return self.user.replace("{context}", context).replace("{question}", question)


def _packaged(name: str) -> str:
    return resources.files("dnfbot").joinpath(f"prompts/{name}").read_text("utf-8")


@lru_cache(maxsize=8)
def _load(path: str | None) -> PromptTemplate:
    if path is None:
        return PromptTemplate(_packaged(SYSTEM_FILE).strip(), _packaged(USER_FILE).strip())
    p = Path(path).expanduser()
    if p.is_dir():  # a folder with either or both files; a missing one falls back to the packaged one
        system = (
            (p / SYSTEM_FILE).read_text("utf-8") if (p / SYSTEM_FILE).exists() else _packaged(SYSTEM_FILE)
        )
        user = (p / USER_FILE).read_text("utf-8") if (p / USER_FILE).exists() else _packaged(USER_FILE)
        where = p / USER_FILE
    elif p.is_file():  # one file: your system rules with the packaged user turn
        system, user, where = p.read_text("utf-8"), _packaged(USER_FILE), p
    else:
        raise InputError(f"{p}: prompt template not found (a {SYSTEM_FILE} file or a folder with both files)")
    for placeholder in ("{context}", "{question}"):
        if placeholder not in user:
            raise InputError(f"{where}: the user template must contain {placeholder}")
    if not system.strip():
        raise InputError(f"{p}: empty system template")
    return PromptTemplate(system.strip(), user.strip(), str(p))


def load_template(path: str | Path | None = None) -> PromptTemplate:
    """The packaged template, or a folder with rag_system.txt / rag_user.txt, or one system-prompt file."""
    return _load(str(path) if path is not None else None)


def defang(text: str) -> str:
    """Make delimiter look-alikes inert: '<' becomes the full-width '＜', which no parser or model reads as ours."""
    return _DELIMITER_RE.sub(lambda m: "＜" + m.group(0)[1:], text)


def _attr(value: str) -> str:
    return defang(value).replace('"', "'").replace("\n", " ")


def format_context(passages: list[Passage]) -> str:
    """The passages as <document> blocks, best first; an explicit marker when there are none."""
    if not passages:
        return NO_CONTEXT
    blocks = [
        f'<document index="{i}" title="{_attr(p.title)}">\n{defang(p.text.strip())}\n</document>'
        for i, p in enumerate(passages, 1)
    ]
    return "\n".join(blocks)


def _history(request: GenerationRequest, turns: int | None) -> list[dict]:
    history = [
        {"role": t["role"], "content": str(t.get("content") or "")}
        for t in request.history
        if t.get("role") in ("user", "assistant")
    ]
    if turns is not None:
        history = history[-2 * turns :] if turns > 0 else []
    return history


def build_messages(
    request: GenerationRequest, template: PromptTemplate | None = None, history_turns: int | None = None
) -> list[dict]:
    """[system, past turns…, user(context + question)] for chat-style back ends (OpenAI API, chat templates)."""
    t = template or load_template()
    user = t.render_user(format_context(request.passages), defang(request.question.strip()))
    return [
        {"role": "system", "content": t.system},
        *_history(request, history_turns),
        {"role": "user", "content": user},
    ]


def build_prompt(
    request: GenerationRequest, template: PromptTemplate | None = None, history_turns: int | None = None
) -> str:
    """One plain prompt for base / SFT models without a chat template, in the project's '### 질문/### 답변' format.

    system rules, past turns as question/answer pairs, then the user turn (context + question) as the question."""
    t = template or load_template()
    parts = [t.system, ""]
    turns = _history(request, history_turns)
    i = 0
    while i < len(turns) - 1:  # complete user → assistant pairs only
        q, a = turns[i], turns[i + 1]
        if q["role"] == "user" and a["role"] == "assistant":
            parts.append(f"{QUESTION_TAG}{q['content'].strip()}\n\n{ANSWER_TAG}{a['content'].strip()}\n")
            i += 2
        else:
            i += 1
    user = t.render_user(format_context(request.passages), defang(request.question.strip()))
    parts.append(format_prompt(user))
    return "\n".join(parts)


def render_for_tokenizer(
    request: GenerationRequest,
    tokenizer,
    template: PromptTemplate | None = None,
    history_turns: int | None = None,
) -> str:
    """What a local HF model sees: its chat template when it has one, else build_prompt()."""
    if getattr(tokenizer, "chat_template", None):
        messages = build_messages(request, template, history_turns)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return build_prompt(request, template, history_turns)
