"""Supervised fine-tuning with (Q)LoRA: TRL's SFTTrainer on {"prompt", "completion"} records.

    text  = "### 질문: {question}\\n\\n### 답변:" + " {answer}<|endoftext|>"
    loss  = mean over answer tokens of  -log p(token | everything before it)

The prompt tokens are inputs only (labels -100): TRL's prompt-completion format masks them, which the test
suite checks on the prepared dataset. The original notebook trained on the whole text and, because
polyglot-ko pads with its eos token, its collator also masked every <|endoftext|> — the model never learnt to stop.
Here the eos is part of the completion and is learnt.

Packing (`packing=True`) puts several examples into one row of `max_length` tokens with best-fit-decreasing and
resets positions at each example; attention never crosses examples (position-id based masks), and no compute
is spent on padding. Defaults (train/options.py): LoRA r=8, alpha=32, dropout 0.05, lr 1e-4 on the attention
projections, optional 4-bit nf4 base (QLoRA) — small enough for one GPU on the large bases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.formats import split_prompt_completion
from dnfbot.train.common import finish_run, start_run, trl_trainer
from dnfbot.train.options import SFTOptions

__all__ = ["SFTOptions", "build_dataset", "make_trainer", "merge_adapter", "run_sft"]


def build_dataset(records: list[dict]) -> Any:
    """datasets.Dataset of {"prompt", "completion"} with the token boundary fixed (see formats.py)."""
    from datasets import Dataset

    rows = [
        dict(
            zip(("prompt", "completion"), split_prompt_completion(r["prompt"], r["completion"]), strict=True)
        )
        for r in records
    ]
    return Dataset.from_list(rows)


def make_trainer(
    model: Any,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    out: Path,
    opts: SFTOptions,
    *,
    callbacks: list | tuple = (),
) -> Any:
    """An SFTTrainer with our options (the model already carries its LoRA adapter)."""
    from trl import SFTConfig, SFTTrainer

    return trl_trainer(
        SFTTrainer,
        SFTConfig,
        model,
        tokenizer,
        train_ds,
        eval_ds,
        out,
        opts,
        callbacks,
        packing=opts.packing,
        completion_only_loss=True,
        dataset_num_proc=None,
    )


def run_sft(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: SFTOptions | None = None,
    callbacks: list | tuple = (),
    **run_args: Any,
) -> dict:
    """Train a LoRA adapter on `data`; writes adapter, tokenizer, README.md, metrics.jsonl, summary.json to `out`.

    run_args: eval_data, resume, overwrite, echo (see train.common.start_run). Returns the run summary (what
    `--json` prints)."""
    opts = options or SFTOptions()
    run = start_run(
        "sft", model, data, out, opts, fields=("prompt", "completion"), task="causal-lm", **run_args
    )
    trainer = make_trainer(
        run.model,
        run.tokenizer,
        build_dataset(run.train),
        build_dataset(run.valid) if run.valid else None,
        run.out,
        opts,
        callbacks=[run.callback, *callbacks],
    )
    answer_tokens, train_tokens = _count_tokens(trainer.train_dataset)
    with run.training():
        result = trainer.train(resume_from_checkpoint=run.resume_from)
        # the metrics callback records the eval_loss log of evaluate() in metrics.jsonl
        eval_loss = trainer.evaluate()["eval_loss"] if run.valid else None
    metrics = {
        "eval_loss": eval_loss,
        "answer_tokens_per_epoch": answer_tokens,
        "train_tokens_per_epoch": train_tokens,
        "train_samples_per_s": result.metrics.get("train_samples_per_second"),
        "packing": opts.packing,
    }
    return finish_run(
        run,
        trainer,
        result,
        metrics,
        title=f"LoRA adapter (SFT) for {Path(str(model)).name}",
        usage=f'dnfbot generate --model {model} --adapter {run.out} "질문"',
    )


def _count_tokens(ds: Any) -> tuple[int, int]:
    """(answer tokens, all tokens) of a prepared (possibly packed) SFT dataset: the loss is on the answer tokens."""
    answer = total = 0
    for ex in ds:
        total += len(ex["input_ids"])
        if "completion_mask" in ex:
            answer += sum(ex["completion_mask"])
        elif "labels" in ex:
            answer += sum(1 for x in ex["labels"] if x != -100)
    return answer, total


def merge_adapter(
    base: str,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Fold a LoRA adapter into its base weights and save a plain model (safetensors) + tokenizer."""
    from dnfbot.models import load_model

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: output directory is not empty")
    model, tok = load_model(base, adapter=adapter, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in merged.parameters())
    return {"output_dir": str(out), "base": str(base), "adapter": str(adapter), "params": n}
