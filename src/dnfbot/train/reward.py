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
from pathlib import Path
from typing import Any

from dnfbot.formats import EOS, split_prompt_completion
from dnfbot.io import write_jsonl
from dnfbot.train.common import finish_run, start_run, trl_trainer
from dnfbot.train.options import RMOptions

__all__ = [
    "PAIR_FIELDS",
    "RMOptions",
    "pair_texts",
    "pairwise_accuracy",
    "run_reward",
    "score_file",
    "score_pairs",
]

PAIR_FIELDS = ("prompt", "chosen", "rejected")


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


def run_reward(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: RMOptions | None = None,
    callbacks: list | tuple = (),
    **run_args: Any,
) -> dict:
    """Train a reward-model LoRA adapter on {"prompt","chosen","rejected"} pairs; returns the run summary.

    run_args: eval_data, resume, overwrite, echo (see train.common.start_run). Validation pairs: `eval_data`,
    else the file's split (datasets/splits.py). The summary's `valid_accuracy` is the share of validation pairs
    ranked chosen > rejected."""
    from trl import RewardConfig, RewardTrainer

    opts = options or RMOptions()
    run = start_run("rm", model, data, out, opts, fields=PAIR_FIELDS, task="seq-cls", **run_args)
    tok = run.tokenizer
    eos = tok.eos_token or EOS
    train_ds = build_pair_dataset(run.train, eos)
    valid_ds = build_pair_dataset(run.valid, eos) if run.valid else None
    trainer = trl_trainer(
        RewardTrainer, RewardConfig, run.model, tok, train_ds, valid_ds, run.out, opts, [run.callback, *callbacks],
        center_rewards_coefficient=opts.center_rewards_coefficient,
    )  # fmt: skip
    valid = None
    with run.training():
        result = trainer.train(resume_from_checkpoint=run.resume_from)
        if run.valid:
            valid = pairwise_accuracy(trainer.model, tok, run.valid, batch_size=opts.batch_size)
            step = trainer.state.global_step
            run.writer.log(step, eval_accuracy=valid["accuracy"], eval_margin=valid["margin"])
    if valid is not None:
        write_jsonl(
            run.out / "valid_scores.jsonl",
            [
                {**{k: r[k] for k in PAIR_FIELDS}, "chosen_score": c, "rejected_score": s}
                for r, c, s in zip(run.valid, valid["chosen"], valid["rejected"], strict=True)
            ],
        )
    metrics = {
        "valid_accuracy": valid["accuracy"] if valid else None,
        "valid_margin": valid["margin"] if valid else None,
    }
    return finish_run(
        run,
        trainer,
        result,
        metrics,
        title=f"Reward model LoRA adapter for {Path(str(model)).name}",
        usage=f"dnfbot reward score --model {model} --adapter {run.out} --data pairs.jsonl",
    )


def score_file(
    model: str,
    adapter: str | os.PathLike | None,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    batch_size: int = 8,
    load_in_4bit: bool = False,
) -> tuple[dict, list[dict]]:
    """Score a file of {"prompt","response"} records — or of pairs, then with pairwise accuracy and margin.

    Returns (summary, the records with their scores); `out` also writes those records as JSONL."""
    from dnfbot.models import load_model
    from dnfbot.train.common import load_records

    pairs = "chosen" in load_records(data, ("prompt",), limit=1)[0]  # pairs, or single responses
    records = load_records(data, PAIR_FIELDS if pairs else ("prompt", "response"))
    m, tok = load_model(model, task="seq-cls", adapter=adapter, load_in_4bit=load_in_4bit)
    res: dict = {"model": model, "adapter": str(adapter) if adapter else None, "records": len(records)}
    if pairs:
        acc = pairwise_accuracy(m, tok, records, batch_size=batch_size)
        scored = [
            {**r, "chosen_score": c, "rejected_score": s}
            for r, c, s in zip(records, acc["chosen"], acc["rejected"], strict=True)
        ]
        res.update(accuracy=acc["accuracy"], margin=acc["margin"])
        scores = acc["chosen"] + acc["rejected"]
    else:
        prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
        scores = score_pairs(m, tok, prompts, responses, batch_size=batch_size)
        scored = [{**r, "score": s} for r, s in zip(records, scores, strict=True)]
    res["mean_score"] = sum(scores) / len(scores)
    if out:
        write_jsonl(out, scored)
        res["out"] = str(out)
    return res, scored
