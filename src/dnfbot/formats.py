"""The prompt format shared by data builders, SFT, RM, PPO and generation (as the original project used it)."""

from __future__ import annotations

EOS = "<|endoftext|>"
QUESTION_TAG = "### 질문: "
ANSWER_TAG = "### 답변: "


def format_prompt(question: str) -> str:
    """What the model sees before it answers: '### 질문: …\\n\\n### 답변: '."""
    return f"{QUESTION_TAG}{question.strip()}\n\n{ANSWER_TAG}"


def format_sft_text(question: str, answer: str, eos: str = EOS) -> str:
    """One training text: '### 질문: {q}\\n\\n### 답변: {a}<|endoftext|>'."""
    return f"{format_prompt(question)}{answer.strip()}{eos}"
