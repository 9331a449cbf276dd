"""The prompt format shared by data builders, SFT, RM, PPO and generation — and where its token boundary lies.

    data files   '### 질문: {q}\\n\\n### 답변: {a}<|endoftext|>'          (the prompt ends in a space)
    the model    prompt '### 질문: {q}\\n\\n### 답변:'  +  completion ' {a}<|endoftext|>'

The space after '### 답변:' belongs to the answer: a byte-level BPE (polyglot-ko's) glues a space onto the next
word (' 네'), so SFT trains on 'prompt:' + ' answer', and generation, PPO and the reward model condition on
'prompt:'. `model_prompt` / `split_prompt_completion` are that decision; no stage strips on its own.
"""

from __future__ import annotations

EOS = "<|endoftext|>"
QUESTION_TAG = "### 질문: "
ANSWER_TAG = "### 답변: "


def format_prompt(question: str) -> str:
    """The data files' prompt: '### 질문: …\\n\\n### 답변: ' (trailing space included)."""
    return f"{QUESTION_TAG}{question.strip()}\n\n{ANSWER_TAG}"


def format_sft_text(question: str, answer: str, eos: str = EOS) -> str:
    """One training text: '### 질문: {q}\\n\\n### 답변: {a}<|endoftext|>'."""
    return f"{format_prompt(question)}{answer.strip()}{eos}"


def model_prompt(prompt_or_question: str) -> str:
    """The text a model is conditioned on: '### 질문: {q}\\n\\n### 답변:' (no trailing space).

    Accepts a bare question or an already formatted prompt (a data record's, or a rendered RAG prompt)."""
    text = (
        prompt_or_question if ANSWER_TAG.strip() in prompt_or_question else format_prompt(prompt_or_question)
    )
    return text.rstrip()


def split_prompt_completion(prompt: str, completion: str) -> tuple[str, str]:
    """(prompt, completion) for training, with the whitespace at the boundary moved onto the completion."""
    c = completion.strip()
    if c.endswith(EOS):
        c = c[: -len(EOS)].rstrip()
    return model_prompt(prompt), " " + c


def split_text_record(text: str) -> tuple[str, str] | None:
    """'### 질문: q\\n\\n### 답변: a<|endoftext|>' → (prompt, answer), or None when the text has no answer tag."""
    tag = ANSWER_TAG.strip()
    i = text.find(tag)
    if i < 0:
        return None
    return text[: i + len(tag)], text[i + len(tag) :]
