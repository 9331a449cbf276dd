"""`hf` back end: a local causal LM (+ optional LoRA adapter, optional 4-bit) through transformers' generate().

    dnfbot generate --model ./polyglot-ko-1.3b --adapter runs/sft "피로도는 언제 회복되나요?"
    dnfbot ask "무의 장막 신수 추천" --backend hf --model ./eeve-10.8b --adapter runs/eeve-rag-sft

Decoding defaults: beam search (3 beams) for a deterministic, fluent answer, no_repeat_ngram_size 4 so that a
small model cannot loop, top_p 0.9 (with --sample), max_new_tokens 256. Beam search cannot stream token by token (transformers refuses a streamer with beams), so a
multi-beam answer arrives in one piece; greedy / sampling (num_beams=1) streams through TextIteratorStreamer.
Prompts use the project's '### 질문: …\\n\\n### 답변:' format (dnfbot.formats) — the exact text SFT trained on —
or the tokenizer's chat template when the model has one (see generate.prompting.render_for_tokenizer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dnfbot.errors import InputError
from dnfbot.formats import QUESTION_TAG, model_prompt
from dnfbot.generate import GenerationRequest, Generator
from dnfbot.options import option

if TYPE_CHECKING:
    from dnfbot.config import GenerationSettings

# The model may go on to invent the next '### 질문:' turn: cut the answer there.
STOP_STRINGS = ["\n### ", "### 질문", QUESTION_TAG.strip()]


@dataclass
class DecodeOptions:
    """Decoding settings (the `generate:` section of a run config; the flags of `dnfbot generate`)."""

    panel = "Decoding"
    max_new_tokens: int = option(256, "answer budget in tokens")
    num_beams: int = option(3, "beam search width (beam search answers arrive at once)")
    no_repeat_ngram_size: int = option(4, "never repeat an n-gram of this size (0: off)")
    do_sample: bool = option(False, "sample instead of beam/greedy search", flag="--sample/--no-sample")
    temperature: float = option(1.0, "sampling temperature (with --sample)")
    top_p: float = option(0.9, "nucleus sampling (with --sample)")
    top_k: int = option(0, "top-k sampling, 0 = off (with --sample)")
    repetition_penalty: float = option(1.0, "penalty on tokens already generated")
    seed: int | None = option(None, "random seed")

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": self.do_sample,
        }
        if self.do_sample:  # top_p / temperature only mean something when sampling (else transformers warns)
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        return kw


def clean_answer(text: str) -> str:
    """The answer without a hallucinated next turn and without surrounding whitespace."""
    cut = len(text)
    for s in STOP_STRINGS:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut].strip()


def generate_stream(
    model: Any, tokenizer: Any, prompt: str, options: DecodeOptions | None = None
) -> Iterator[str]:
    """Yield the answer to `prompt` piece by piece (one piece when beam search is on).

    Generation stops at the eos token or at a new '### 질문' turn, whichever comes first."""
    import torch
    from transformers import TextIteratorStreamer

    opts = options or DecodeOptions()
    if opts.seed is not None:
        torch.manual_seed(opts.seed)
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    kw = {
        **enc,
        **opts.generate_kwargs(),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "stop_strings": STOP_STRINGS,
        "tokenizer": tokenizer,
    }
    model.eval()
    if opts.num_beams > 1:
        with torch.no_grad():
            out = model.generate(**kw)
        text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        answer = clean_answer(text)
        if answer:
            yield answer
        return

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    error: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(**kw, streamer=streamer)
        except BaseException as e:  # surfaced in the caller's thread
            error.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text, sent = "", 0
    for piece in streamer:
        text += piece
        visible, done = _visible(text)
        if len(visible) > sent:
            yield visible[sent:]
            sent = len(visible)
        if done:
            # drain: generation stops on its own at the stop string. Only after a break — once the streamer
            # has ended, iterating it again would wait forever for a next piece
            for _ in streamer:
                pass
            break
    thread.join()
    if error:
        raise error[0]
    final = clean_answer(text)
    if len(final) > sent:
        yield final[sent:]


def _visible(text: str) -> tuple[str, bool]:
    """The part of the text so far that is surely answer: cut at a stop string (done), and hold back a tail that
    could be the start of one. Stripped, so the pieces join to exactly clean_answer(text)."""
    text = text.lstrip()
    cut = min((i for i in (text.find(s) for s in STOP_STRINGS) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut].rstrip(), True
    hold = max((k for s in STOP_STRINGS for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold].rstrip(), False


class HFGenerator(Generator):
    """Local transformers model for `dnfbot ask/chat/serve --backend hf` (settings: model, adapter, load_in_4bit).

    RAG answers use the editable RAG template (generate.prompting) rendered as one '### 질문/### 답변' prompt;
    temperature 0 = greedy and streamed, > 0 = sampling with top_p 0.9."""

    name = "hf"

    def __init__(self, settings: GenerationSettings, decode: DecodeOptions | None = None, **_: object):
        from dnfbot.generate.prompting import load_template
        from dnfbot.models import load_model

        if not settings.model:
            raise InputError("generation.model: the hf back end needs --model PATH (a local model directory)")
        self.model, self.tokenizer = load_model(
            settings.model, adapter=settings.adapter, load_in_4bit=settings.load_in_4bit, padding_side="left"
        )
        self.settings = settings
        self.decode = decode
        self.template = load_template(settings.prompt_template)

    def __repr__(self) -> str:
        return f"HFGenerator(model={self.settings.model!r}, adapter={self.settings.adapter!r})"

    def prompt(self, request: GenerationRequest) -> str:
        from dnfbot.generate.prompting import render_for_tokenizer

        text = render_for_tokenizer(request, self.tokenizer, self.template, self.settings.history_turns)
        # a chat template ends where the model's own format says; ours at the boundary SFT trained on
        return text if getattr(self.tokenizer, "chat_template", None) else model_prompt(text)

    def options(self, request: GenerationRequest) -> DecodeOptions:
        if self.decode is not None:
            return DecodeOptions(**{**asdict(self.decode), "max_new_tokens": request.max_new_tokens})
        sample = request.temperature > 0
        return DecodeOptions(
            max_new_tokens=request.max_new_tokens,
            num_beams=1,  # beams cannot stream token by token; `dnfbot generate` keeps beam search
            do_sample=sample,
            temperature=request.temperature if sample else 1.0,
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        yield from generate_stream(self.model, self.tokenizer, self.prompt(request), self.options(request))
