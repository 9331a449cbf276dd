"""Supervised fine-tuning with (Q)LoRA: TRL's SFTTrainer on {"prompt", "completion"} records.

    text  = "### 질문: {question}\\n\\n### 답변:" + " {answer}<|endoftext|>"
    loss  = mean over answer tokens of  -log p(token | everything before it)

The prompt tokens are inputs only (labels -100): TRL's prompt-completion format masks them, which the test
suite checks on the prepared dataset. The original notebook trained on the whole text and, because
polyglot-ko pads with its eos token, its collator also masked every <|endoftext|> — the model never learnt to stop.
Here the eos is part of the completion and is learnt.

Packing (`packing=True`) puts several examples into one row of `max_length` tokens with best-fit-decreasing and
resets positions at each example; attention never crosses examples (position-id based masks), and no compute
is spent on padding. Defaults follow the original set-up: LoRA r=8, alpha=32, dropout 0.05, lr 1e-4, target
modules by architecture, optional 4-bit nf4 base (QLoRA).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.train.common import (
    MetricsWriter,
    checkpoint_step,
    hash_split,
    load_records,
    metrics_callback,
    prepare_output_dir,
    quiet_trainer,
    read_metrics,
    save_final,
    set_threads,
    split_prompt_completion,
    training_args,
    write_model_card,
    write_summary,
)


@dataclass
class SFTOptions:
    model: str | None = None
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    dtype: str | None = None  # None: float32 on CPU, bf16 on a bf16 GPU, bf16 compute with 4-bit
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str | None = (
        None  # None: by architecture (models.lora_target_modules); "all-linear"
    )
    lora_modules_to_save: list[str] | None = (
        None  # trained in full and saved with the adapter (e.g. ["lm_head"])
    )
    lr: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 1024
    packing: bool = False
    gradient_checkpointing: bool = False
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    optim: str = "adamw_torch"  # the original used paged_adamw_8bit on GPU (see configs/)
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    eval_steps: int | None = None  # None: evaluate once at the end
    valid_fraction: float = 0.05
    limit: int | None = None
    seed: int = 42
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to TRL's SFTConfig


def build_dataset(records: list[dict]) -> Any:
    """datasets.Dataset of {"prompt", "completion"} with the token boundary fixed (see common.model_prompt)."""
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

    args = SFTConfig(
        **training_args(opts, out, has_eval=eval_ds is not None),
        packing=opts.packing,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    quiet_trainer(trainer)
    return trainer


def run_sft(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: SFTOptions | None = None,
    eval_data: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | tuple = (),
    echo: bool = True,
) -> dict:
    """Train a LoRA adapter on `data`; writes adapter, tokenizer, README.md, metrics.jsonl, summary.json to `out`.

    Returns the run summary (what `--json` prints)."""
    from dnfbot.models import add_lora, count_parameters, default_lora_config, load_model

    opts = options or SFTOptions()
    opts.model = str(model)
    set_threads(opts.threads)
    out = Path(out)
    records = load_records(data, ("prompt", "completion"), limit=opts.limit)
    if eval_data is not None:
        train_recs, valid_recs = records, load_records(eval_data, ("prompt", "completion"))
    else:
        train_recs, valid_recs = hash_split(records, "prompt", opts.valid_fraction)
    ckpt = prepare_output_dir(out, resume=resume, overwrite=overwrite)

    model_obj, tok = load_model(
        model, load_in_4bit=opts.load_in_4bit, trust_remote_code=opts.trust_remote_code, dtype=opts.dtype
    )
    lora = default_lora_config(
        model_obj.config,
        "causal-lm",
        r=opts.lora_r,
        alpha=opts.lora_alpha,
        dropout=opts.lora_dropout,
        target_modules=opts.lora_targets,
        modules_to_save=opts.lora_modules_to_save,
    )
    peft_model = add_lora(model_obj, lora, gradient_checkpointing=opts.gradient_checkpointing)
    trainable, total = count_parameters(peft_model)

    writer = MetricsWriter(out / "metrics.jsonl", echo=echo)
    cb = metrics_callback(writer)
    trainer = make_trainer(
        peft_model,
        tok,
        build_dataset(train_recs),
        build_dataset(valid_recs) if valid_recs else None,
        out,
        opts,
        callbacks=[cb, *callbacks],
    )
    answer_tokens, train_tokens = _count_tokens(trainer.train_dataset)

    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        # the metrics callback records the eval_loss log of evaluate() in metrics.jsonl
        eval_loss = trainer.evaluate()["eval_loss"] if valid_recs else None
    finally:
        writer.close()
    elapsed = time.time() - t0
    save_final(trainer, out)  # adapter + tokenizer (processing_class)

    steps = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in steps if "loss" in r]
    runtime = result.metrics.get("train_runtime") or elapsed
    summary = {
        "stage": "sft",
        "output_dir": str(out),
        "model": str(model),
        "data": str(data),
        "train_records": len(train_recs),
        "valid_records": len(valid_recs),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "resumed_from_step": checkpoint_step(ckpt) if ckpt else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        "eval_loss": eval_loss,
        "answer_tokens_per_epoch": answer_tokens,
        "train_tokens_per_epoch": train_tokens,
        "train_runtime_s": round(runtime, 2),
        "train_samples_per_s": result.metrics.get("train_samples_per_second"),
        "trainable_params": trainable,
        "total_params": total,
        "load_in_4bit": opts.load_in_4bit,
        "packing": opts.packing,
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
    }
    write_summary(out, summary)
    write_model_card(
        out,
        title=f"LoRA adapter (SFT) for {Path(str(model)).name}",
        summary=summary,
        options=summary["options"],
        usage=f'dnfbot generate --model {model} --adapter {out} "질문"',
    )
    return summary


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
