"""Answer generators behind one interface.

rag.py retrieves passages and decides whether the evidence is strong enough; a Generator then turns
(question, passages, history) into answer text. Back ends: `extractive` (no model, here), `hf` (local causal
LM + LoRA) and `openai` (any OpenAI-compatible server) plug in through `get_generator()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Passage:
    """A retrieved chunk as the generator sees it."""

    chunk_id: str
    doc_id: str
    title: str
    part: int
    text: str
    score: float


@dataclass
class GenerationRequest:
    question: str
    passages: list[Passage]
    history: list[dict] = field(default_factory=list)  # [{"role": "user"|"assistant", "content": str}, ...]
    max_new_tokens: int = 512
    temperature: float = 0.0
    # Query term → weight (BM25 idf), filled by rag.py.
    term_weights: dict[str, float] = field(default_factory=dict)
    # The evidence gate's reading of the question and passages (retrieval/evidence.py, retrieval/passages.py),
    # filled by rag.py: the extractive back end chooses its sentences from them.
    query: Any = None
    evidence: Any = None
    analyses: list = field(default_factory=list)  # one PassageAnalysis per passage
    passage_ranks: list[int] = field(
        default_factory=list
    )  # retrieval rank of each passage's article (0 = best)
    said: list[str] = field(default_factory=list)  # sentences the conversation already said: never repeated


class Generator(ABC):
    """Turns a request into answer text. Implement `stream`; `generate` joins it."""

    name: str = "base"

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[str]: ...

    def generate(self, request: GenerationRequest) -> str:
        return "".join(self.stream(request))


_REGISTRY: dict[str, str] = {
    "extractive": "dnfbot.generate.extractive:ExtractiveGenerator",
    "hf": "dnfbot.generate.hf:HFGenerator",
    "openai": "dnfbot.generate.openai_compat:OpenAIGenerator",
}


def get_generator(name: str, **kwargs) -> Generator:
    """Build a back end by name; heavy imports happen only for the chosen one.

    Back ends are constructed as `Cls(settings=GenerationSettings)` (see dnfbot.config): model, adapter,
    load_in_4bit, base_url, max_new_tokens, temperature, history_turns, prompt_template."""
    import importlib

    from dnfbot.errors import InputError

    if name not in _REGISTRY:
        raise InputError(f"unknown generator '{name}' (choose from {', '.join(_REGISTRY)})")
    module, cls = _REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise InputError(f"generator '{name}' needs an optional extra: {e}") from None
    return getattr(mod, cls)(**kwargs)
