"""Reward model: a 1-label sequence classifier trained on ranked pairs with TRL's RewardTrainer + LoRA.

    r(x, y) = w · h_last(prompt + " " + response)            (score head on the last real token)
    loss    = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))   (Bradley-Terry)

The base is the same causal LM as SFT, loaded as `XForSequenceClassification` with `num_labels=1` and the pad
token set in its config (polyglot-ko pads with <|endoftext|>, so the score is read at the last answer token: the
eos appended to every text counts as padding — the same at training and scoring time). LoRA (task SEQ_CLS) adapts
the attention projections; the `score` head is trained in full and saved with the adapter (modules_to_save), so
`load_model(base, task="seq-cls", adapter=out)` restores exactly the trained reward model. PPO reads that head.

Output: adapter + tokenizer, README.md, metrics.jsonl, summary.json and `valid_scores.jsonl` (the validation
pairs with their chosen/rejected scores at the end of training — reloading the adapter must reproduce them).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dnfbot.formats import EOS
from dnfbot.io import write_jsonl
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

PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class RMOptions:
    model: str | None = None
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    dtype: str | None = None
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str | None = None
    lr: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4  # pairs per step (2x sequences)
    grad_accum: int = 1
    max_length: int = 512  # longer pairs are dropped (TRL's RewardTrainer filters, it does not truncate)
    gradient_checkpointing: bool = False
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    center_rewards_coefficient: float | None = None  # e.g. 0.01 keeps rewards centred on 0 (useful for PPO)
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    eval_steps: int | None = None
    valid_fraction: float = 0.1
    limit: int | None = None
    seed: int = 42
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to TRL's RewardConfig


def pair_texts(prompt: str, response: str, eos: str = EOS) -> str:
    """The exact text the reward model scores: '### 질문: …\\n\\n### 답변: {response}<|endoftext|>'.

    eos: the tokenizer's eos token (polyglot-ko's is <|endoftext|>; EEVE's is another), so TRL adds no second one."""
    p, c = split_prompt_completion(prompt, response)
    return p + c + eos


def build_pair_dataset(records: list[dict], eos: str = EOS) -> Any:
    """datasets.Dataset of {"chosen", "rejected"} full texts (prompt included, eos appended)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "chosen": pair_texts(r["prompt"], r["chosen"], eos),
                "rejected": pair_texts(r["prompt"], r["rejected"], eos),
            }
            for r in records
        ]
    )


def score_texts(
    model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 8, max_length: int = 2048
) -> list[float]:
    """Reward of each full text (see pair_texts), in batches, without gradients."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            logits = model(**enc).logits
            scores.extend(float(x) for x in logits[:, 0].float().cpu())
    return scores


def score_pairs(
    model: Any, tokenizer: Any, prompts: list[str], responses: list[str], *, batch_size: int = 8
) -> list[float]:
    """Reward r(prompt, response) for each pair: what PPO and `dnfbot reward score` use."""
    eos = tokenizer.eos_token or EOS
    texts = [pair_texts(p, r, eos) for p, r in zip(prompts, responses, strict=True)]
    return score_texts(model, tokenizer, texts, batch_size=batch_size)


def pairwise_accuracy(model: Any, tokenizer: Any, records: list[dict], *, batch_size: int = 8) -> dict:
    """Scores of chosen and rejected for each record, the share with chosen > rejected, and the mean margin."""
    prompts = [r["prompt"] for r in records]
    chosen = score_pairs(model, tokenizer, prompts, [r["chosen"] for r in records], batch_size=batch_size)
    rejected = score_pairs(model, tokenizer, prompts, [r["rejected"] for r in records], batch_size=batch_size)
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "accuracy": sum(wins) / len(wins) if wins else None,
        "margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(wins) if wins else None,
        "chosen": chosen,
        "rejected": rejected,
    }


def make_trainer(
    model: Any,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    out: Path,
    opts: RMOptions,
    *,
    callbacks: list | tuple = (),
) -> Any:
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **training_args(opts, out, has_eval=eval_ds is not None),
        center_rewards_coefficient=opts.center_rewards_coefficient,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    quiet_trainer(trainer)
    return trainer


def run_reward(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: RMOptions | None = None,
    eval_data: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | tuple = (),
    echo: bool = True,
) -> dict:
    """Train a reward-model LoRA adapter on {"prompt","chosen","rejected"} pairs; returns the run summary.

    Validation pairs: `eval_data`, else records marked "split": "valid", else a stable hash split of the prompts
    (`valid_fraction`). The summary's `valid_accuracy` is the share of validation pairs ranked chosen > rejected."""
    from dnfbot.models import add_lora, count_parameters, default_lora_config, load_model

    opts = options or RMOptions()
    opts.model = str(model)
    set_threads(opts.threads)
    out = Path(out)
    records = load_records(data, PAIR_FIELDS, limit=opts.limit)
    if eval_data is not None:
        train_recs, valid_recs = records, load_records(eval_data, PAIR_FIELDS)
    else:
        train_recs, valid_recs = hash_split(records, "prompt", opts.valid_fraction)
    ckpt = prepare_output_dir(out, resume=resume, overwrite=overwrite)

    base, tok = load_model(
        model,
        task="seq-cls",
        load_in_4bit=opts.load_in_4bit,
        trust_remote_code=opts.trust_remote_code,
        dtype=opts.dtype,
    )
    lora = default_lora_config(
        base.config,
        "seq-cls",
        r=opts.lora_r,
        alpha=opts.lora_alpha,
        dropout=opts.lora_dropout,
        target_modules=opts.lora_targets,
    )
    peft_model = add_lora(base, lora, task="seq-cls", gradient_checkpointing=opts.gradient_checkpointing)
    trainable, total = count_parameters(peft_model)

    writer = MetricsWriter(out / "metrics.jsonl", echo=echo)
    eos = tok.eos_token or EOS
    trainer = make_trainer(
        peft_model,
        tok,
        build_pair_dataset(train_recs, eos),
        build_pair_dataset(valid_recs, eos) if valid_recs else None,
        out,
        opts,
        callbacks=[metrics_callback(writer), *callbacks],
    )
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        valid = (
            pairwise_accuracy(trainer.model, tok, valid_recs, batch_size=opts.batch_size)
            if valid_recs
            else None
        )
        if valid is not None:
            writer.log(
                trainer.state.global_step, eval_accuracy=valid["accuracy"], eval_margin=valid["margin"]
            )
    finally:
        writer.close()
    save_final(trainer, out)  # adapter (LoRA + score head) + tokenizer
    if valid is not None:
        write_jsonl(
            out / "valid_scores.jsonl",
            [
                {**{k: r[k] for k in PAIR_FIELDS}, "chosen_score": c, "rejected_score": s}
                for r, c, s in zip(valid_recs, valid["chosen"], valid["rejected"], strict=True)
            ],
        )

    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    summary = {
        "stage": "rm",
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
        "valid_accuracy": valid["accuracy"] if valid else None,
        "valid_margin": valid["margin"] if valid else None,
        "train_runtime_s": round(result.metrics.get("train_runtime") or time.time() - t0, 2),
        "trainable_params": trainable,
        "total_params": total,
        "load_in_4bit": opts.load_in_4bit,
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
    }
    write_summary(out, summary)
    write_model_card(
        out,
        title=f"Reward model LoRA adapter for {Path(str(model)).name}",
        summary=summary,
        options=summary["options"],
        usage=f"dnfbot reward score --model {model} --adapter {out} --data pairs.jsonl",
    )
    return summary
