"""Direct preference optimisation: TRL's DPOTrainer with (Q)LoRA on ranked {"prompt", "chosen", "rejected"} pairs.

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))              (the implicit reward)
    loss    = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))           (Bradley-Terry on that reward)

DPO learns the preference of `train rm`'s pairs without a reward model and without sampling: one forward pass of
the policy and one of the reference per pair. The policy is the base + a fresh LoRA adapter; the reference is the
same base with the adapter *disabled* (TRL does this when it is handed the base and the LoRA config), so no second
copy of the model is held — with a 4-bit base this is QLoRA-DPO on one GPU. log pi(y | x) sums the log-probabilities
of the response tokens, the eos included, in the prompt format of formats.py (the same texts as SFT and the RM).

Held-out check (summary.json): on the validation pairs, computed here and not read off TRL's logs,
  valid_margin_before / _after       mean r(x, chosen) - r(x, rejected); 0 before training by construction (the
                                     fresh adapter is the reference), so what matters is that it rises above 0;
  valid_accuracy_after               share of validation pairs with r(chosen) > r(rejected);
  valid_logp_margin_before / _after  mean log pi(chosen) - log pi(rejected): the policy's own preference, which
                                     starts wherever the base puts it (long answers have lower total log-prob).
Per-pair values at the end go to valid_scores.jsonl, as the RM writes them.

Output: adapter + tokenizer, README.md, metrics.jsonl, summary.json, valid_scores.jsonl.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.formats import EOS, split_prompt_completion
from dnfbot.io import atomic_write_text, read_json, read_jsonl, write_jsonl
from dnfbot.train.common import finish_run, start_run, trl_trainer
from dnfbot.train.options import DPOOptions

__all__ = ["PAIR_FIELDS", "DPOOptions", "build_dpo_dataset", "build_report", "implicit_rewards", "run_dpo"]

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def build_dpo_dataset(records: list[dict]) -> Any:
    """datasets.Dataset of {"prompt", "chosen", "rejected"}: the prompt in the model's format, each response with
    the leading space of the token boundary (TRL appends the eos)."""
    from datasets import Dataset

    rows = []
    for r in records:
        prompt, chosen = split_prompt_completion(r["prompt"], r["chosen"])
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": split_prompt_completion(r["prompt"], r["rejected"])[1],
            }
        )
    return Dataset.from_list(rows)


def response_logps(
    model: Any, tokenizer: Any, prompts: list[str], responses: list[str], *, batch_size: int = 8,
    max_length: int = 512,
) -> list[float]:  # fmt: skip
    """Sum of log p(response token | everything before it) over each response's tokens (eos included)."""
    import torch

    eos = tokenizer.eos_token or EOS
    device = next(model.parameters()).device
    # a 4-bit base computes in bf16 and TRL keeps a QLoRA adapter (and a fully trained head) in bf16: mixed
    # float32/bf16 layers need autocast, as in training
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(quantized))
    out: list[float] = []
    model.eval()
    with torch.no_grad(), autocast:
        for i in range(0, len(prompts), batch_size):
            ids, starts = [], []
            for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size], strict=True):
                prompt, response = split_prompt_completion(p, r)
                p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                full = tokenizer(prompt + response + eos, add_special_tokens=False)["input_ids"][:max_length]
                starts.append(min(len(p_ids), len(full) - 1))
                ids.append(full)
            width = max(len(x) for x in ids)
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
            for row, (x, s) in enumerate(zip(ids, starts, strict=True)):
                out.append(float(logp[row, s - 1 : len(x) - 1].sum()))  # predictions of tokens s..end
    return out


def implicit_rewards(
    model: Any,
    tokenizer: Any,
    records: list[dict],
    *,
    beta: float,
    batch_size: int = 8,
    max_length: int = 512,
) -> dict:
    """DPO's implicit rewards of chosen and rejected on `records` (model: a PeftModel; the reference is the same
    model with its adapter disabled), their margin and accuracy, and the policy's log-prob margin."""
    prompts = [r["prompt"] for r in records]
    kw = {"batch_size": batch_size, "max_length": max_length}

    def logps() -> tuple[list[float], list[float]]:
        return (
            response_logps(model, tokenizer, prompts, [r["chosen"] for r in records], **kw),
            response_logps(
                model, tokenizer, prompts, [r["rejected"] for r in records], batch_size=batch_size
            ),
        )

    chosen, rejected = logps()
    with model.disable_adapter():
        ref_chosen, ref_rejected = logps()
    r_c = [beta * (a - b) for a, b in zip(chosen, ref_chosen, strict=True)]
    r_r = [beta * (a - b) for a, b in zip(rejected, ref_rejected, strict=True)]
    n = len(records)
    return {
        "margin": sum(c - r for c, r in zip(r_c, r_r, strict=True)) / n,
        "accuracy": sum(c > r for c, r in zip(r_c, r_r, strict=True)) / n,
        "logp_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n,
        "chosen_reward": r_c,
        "rejected_reward": r_r,
        "chosen_logp": chosen,
        "rejected_logp": rejected,
    }


def run_dpo(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: DPOOptions | None = None,
    callbacks: list | tuple = (),
    **run_args: Any,
) -> dict:
    """Train a LoRA adapter with DPO on {"prompt","chosen","rejected"} pairs (`dnfbot data rm`'s pair files);
    returns the run summary.

    run_args: eval_data, resume, overwrite, echo (see train.common.start_run). Validation pairs: `eval_data`,
    else the file's split (datasets/splits.py)."""
    from trl import DPOConfig, DPOTrainer

    opts = options or DPOOptions()
    run = start_run("dpo", model, data, out, opts, fields=PAIR_FIELDS, task="causal-lm", **run_args)
    # start_run wraps the base in a fresh adapter; TRL is given the bare base and that adapter's config instead, so
    # that its reference is the base with the adapter disabled (a wrapped model would get a second, "ref" adapter)
    lora = run.model.peft_config["default"]
    base = run.model.unload()
    tok = run.tokenizer
    valid_ds = build_dpo_dataset(run.valid) if run.valid else None
    trainer = trl_trainer(
        DPOTrainer, DPOConfig, base, tok, build_dpo_dataset(run.train), valid_ds, run.out, opts,
        [run.callback, *callbacks], trainer_kwargs={"peft_config": lora},
        beta=opts.beta, loss_type=[opts.loss_type], label_smoothing=opts.label_smoothing,
        gradient_checkpointing=opts.gradient_checkpointing,  # TRL's default is on
        dataset_num_proc=None,
    )  # fmt: skip
    run.model = trainer.model
    before = after = None

    def held_out() -> dict:  # the implicit rewards of the valid pairs under the current adapter
        return implicit_rewards(
            trainer.model,
            tok,
            run.valid,
            beta=opts.beta,
            batch_size=opts.batch_size,
            max_length=opts.max_length,
        )

    with run.training():
        if run.valid:
            before = held_out()
        result = trainer.train(resume_from_checkpoint=run.resume_from)
        if run.valid:
            after = held_out()
            run.writer.log(
                trainer.state.global_step,
                eval_margin=after["margin"],
                eval_accuracy=after["accuracy"],
                eval_logp_margin=after["logp_margin"],
            )
    if after is not None and trainer.is_world_process_zero():
        write_jsonl(
            run.out / "valid_scores.jsonl",
            [
                {**{k: r[k] for k in PAIR_FIELDS}, **{k: after[k][i] for k in _PER_PAIR}}
                for i, r in enumerate(run.valid)
            ],
        )
    metrics = {
        "beta": opts.beta,
        "valid_margin_before": before["margin"] if before else None,
        "valid_margin_after": after["margin"] if after else None,
        "valid_accuracy_after": after["accuracy"] if after else None,
        "valid_logp_margin_before": before["logp_margin"] if before else None,
        "valid_logp_margin_after": after["logp_margin"] if after else None,
    }
    return finish_run(
        run,
        trainer,
        result,
        metrics,
        title=f"LoRA adapter (DPO) for {Path(str(model)).name}",
        usage=f'dnfbot generate --model {model} --adapter {run.out} "질문"',
    )


_PER_PAIR = ("chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp")


def is_dpo_run(run_dir: str | os.PathLike) -> bool:
    """A finished `dnfbot train dpo` run directory (what `report rlhf` tells apart from a PPO run)."""
    path = Path(run_dir) / "summary.json"
    return path.exists() and read_json(path).get("stage") == "dpo"


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, samples: int = 8) -> dict:
    """`dnfbot report rlhf --run DPO_RUN`: held-out pairs before vs after (implicit reward margin, accuracy, the
    policy's log-prob margin), sample pairs with their rewards, and the training curves; writes report.md."""
    from dnfbot.train.plot import plot_metrics

    run = Path(run_dir)
    scores_path = run / "valid_scores.jsonl"
    if not is_dpo_run(run) or not scores_path.exists():
        raise InputError(
            f"{run}: not a finished `dnfbot train dpo` run with validation pairs (valid_scores.jsonl)"
        )
    s = read_json(run / "summary.json")
    pairs = read_jsonl(scores_path)
    report_path = Path(out) if out else run / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    png = Path(plot_metrics(run, report_path.parent / "metrics.png")["png"])

    def f(x: float | None, spec: str = "+.3f") -> str:
        return "n/a" if x is None else format(x, spec)

    def cell(text: str, limit: int = 120) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    lines = [
        "# RLHF report — DPO",
        "",
        f"Run: `{run}`  ",
        f"Policy: `{s.get('model')}` + LoRA; reference: the same base with the adapter disabled; beta {s.get('beta')}  ",
        f"Steps: {s.get('steps')}; training pairs: {s.get('train_records')}; held-out pairs: {len(pairs)}.",
        "",
        "## Held-out pairs: before vs after",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| mean implicit reward margin r(chosen) − r(rejected) | {f(s.get('valid_margin_before'))} "
        f"| {f(s.get('valid_margin_after'))} |",
        f"| pairs with r(chosen) > r(rejected) | 0/{len(pairs)} (all rewards 0: policy = reference) "
        f"| {sum(p['chosen_reward'] > p['rejected_reward'] for p in pairs)}/{len(pairs)} |",
        f"| mean log π(chosen) − log π(rejected) | {f(s.get('valid_logp_margin_before'), '+.2f')} "
        f"| {f(s.get('valid_logp_margin_after'), '+.2f')} |",
        "",
        "r(x, y) = beta · (log π(y|x) − log π_ref(y|x)): DPO's reward is implicit in the policy; no reward model is "
        "trained or sampled from.",
        "",
        "## Samples",
        "",
        "| # | Query | Chosen | Rejected | r(chosen) | r(rejected) |",
        "|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(pairs[:samples], 1):
        lines.append(
            f"| {i} | {cell(p['prompt'])} | {cell(p['chosen'], 160)} | {cell(p['rejected'], 160)} "
            f"| {p['chosen_reward']:+.3f} | {p['rejected_reward']:+.3f} |"
        )
    lines += ["", "## Training curves", "", f"![{png.stem}]({png.name})", ""]
    lines += [f"Regenerate: `dnfbot report rlhf --run {run}`", ""]
    atomic_write_text(report_path, "\n".join(lines))
    return {
        "report": str(report_path),
        "plots": [str(png)],
        "algo": "dpo",
        "n_prompts": len(pairs),
        "margin_before": s.get("valid_margin_before"),
        "margin_after": s.get("valid_margin_after"),
        "accuracy_after": s.get("valid_accuracy_after"),
    }
