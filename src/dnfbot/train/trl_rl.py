"""`dnfbot train ppo --algo grpo|rloo`: TRL's GRPOTrainer / RLOOTrainer on the same data, reward model and report.

What is shared with our PPO (dnfbot.train.ppo), so that the runs compare like for like:
    - the policy: base + SFT adapter (trainable); TRL keeps a frozen copy of it as the "ref" adapter on the same
      base (its PEFT path), which is exactly our PPO reference;
    - the reward: the reward model's LoRA adapter loaded onto the same base (`RewardModel`), scores read at the
      last response token, normalised with the initial policy's statistics, minus the no-EOS penalty;
    - the held-out split, the before/after evaluation (eval_before/after.jsonl), summary.json and metrics.jsonl,
      so `dnfbot report rlhf` works unchanged.
What differs is the algorithm: no value function; several responses per prompt (`group_size`) and a group-relative
baseline (GRPO: mean/std of the group; RLOO: leave-one-out mean), KL as a loss term with coefficient `kl_coef`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from dnfbot.errors import InputError
from dnfbot.io import atomic_write_json, read_jsonl, write_jsonl
from dnfbot.train.common import MetricsWriter, last_complete_checkpoint, model_prompt, quiet_trainer
from dnfbot.train.ppo import (
    PPOConfig,
    batch_indices,
    encode_queries,
    evaluate,
    finish_summary,
    fixed_seed,
    left_pad,
    load_prompts,
    reference_is_frozen,
    rollout,
    save_policy,
    split_prompts,
)
from dnfbot.train.ppo_models import POLICY, PPOModels, build_models

ALGOS = ("grpo", "rloo")

# TRL log key -> our metrics.jsonl key (the PPO names, so plots and the report read both)
_LOG_KEYS = {
    "loss": "loss",
    "learning_rate": "lr",
    "entropy": "entropy",
    "completions/mean_length": "response_length",
    "clip_ratio/region_mean": "clipfrac",
    "kl": "kl_per_token",
    "reward_std": "reward_std",
    "grad_norm": "grad_norm",
}


class RewardFunction:
    """TRL reward function: (prompts, completions, completion_ids) -> normalised scores; remembers the raw ones."""

    def __init__(self, models: PPOModels, score_mean: float, score_std: float, no_eos_penalty: float):
        self.models, self.mean, self.std, self.penalty = models, score_mean, score_std, no_eos_penalty
        self.raw: list[float] = []
        self.__name__ = "reward_model"  # TRL names the logged reward column after the function

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any):
        tok = self.models.tokenizer
        queries = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        q_ids, q_mask = left_pad(queries, tok.pad_token_id)
        width = max(len(c) for c in completion_ids)
        resp = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros_like(resp)
        for i, c in enumerate(completion_ids):
            resp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            r_mask[i, : len(c)] = 1
        device = self.models.device
        ids, mask = torch.cat([q_ids, resp], 1).to(device), torch.cat([q_mask, r_mask], 1).to(device)
        raw = self.models.reward.score(ids, mask).cpu()
        has_eos = torch.tensor([len(c) > 0 and c[-1] == tok.eos_token_id for c in completion_ids])
        self.raw.extend(raw.tolist())
        return ((raw - self.mean) / self.std - self.penalty * (~has_eos).float()).tolist()

    def pop_mean(self) -> float | None:
        out = sum(self.raw) / len(self.raw) if self.raw else None
        self.raw = []
        return out


def _trl_config(algo: str, cfg: PPOConfig, out: Path, group_size: int) -> Any:
    from trl import GRPOConfig, RLOOConfig

    if cfg.batch_size % group_size:
        raise InputError(
            f"--algo {algo}: batch_size ({cfg.batch_size}) must be a multiple of group_size ({group_size})"
        )
    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "trl"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        num_generations=group_size,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear" if cfg.lr_decay else "constant",
        adam_epsilon=cfg.adam_eps,
        max_grad_norm=cfg.max_grad_norm,
        beta=cfg.kl_coef,
        epsilon=cfg.cliprange,
        num_iterations=1,
        disable_dropout=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=1,
        save_steps=cfg.save_every,
        save_total_limit=max(cfg.keep_checkpoints, 1),
        seed=cfg.seed,
        report_to=[],
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        disable_tqdm=True,
    )
    return (GRPOConfig if algo == "grpo" else RLOOConfig)(**kwargs)


def run_trl_rl(
    algo: str,
    *,
    model: str,
    prompts: str | Path,
    out_dir: str | Path,
    sft_adapter: str | Path | None = None,
    reward_adapter: str | Path | None = None,
    reward_model: str | None = None,
    cfg: PPOConfig | None = None,
    group_size: int = 4,
    load_in_4bit: bool = False,
    resume: bool = True,
    limit: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train with TRL's GRPO or RLOO; same outputs as `run_ppo` (summary.json, eval_*.jsonl, adapter/)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    if algo not in ALGOS:
        raise InputError(f"unknown --algo '{algo}' (choose ppo, grpo or rloo)")
    cfg = cfg or PPOConfig()
    cfg.validate()
    out = Path(out_dir)
    ckpt = last_complete_checkpoint(out / "trl") if resume else None
    if not resume and last_complete_checkpoint(out / "trl") is not None:
        raise InputError(f"{out}: already holds checkpoints; resume (the default) or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    all_prompts = load_prompts(prompts)[: limit or None]
    # no "ref" adapter of ours: TRL adds its own frozen copy of the policy adapter under that name
    models = build_models(
        model,
        sft_adapter=sft_adapter,
        reward_adapter=reward_adapter,
        reward_model=reward_model,
        load_in_4bit=load_in_4bit,
        gradient_checkpointing=False,
        with_reference=False,
        seed=cfg.seed,
    )
    train_prompts, eval_prompts = split_prompts(all_prompts, cfg.eval_prompts, cfg.seed)
    train_items = encode_queries(train_prompts, models.tokenizer, cfg.max_prompt_tokens)
    eval_items = encode_queries(eval_prompts, models.tokenizer, cfg.max_prompt_tokens)
    if not train_items:
        raise InputError(f"{prompts}: no training prompt fits in max_prompt_tokens={cfg.max_prompt_tokens}")
    atomic_write_json(
        out / "config.json",
        {
            "algo": algo,
            "model": str(model),
            "sft_adapter": None if sft_adapter is None else str(sft_adapter),
            "reward_adapter": None if reward_adapter is None else str(reward_adapter),
            "reward_model": reward_model,
            "prompts": str(prompts),
            "load_in_4bit": load_in_4bit,
            "group_size": group_size,
            "n_train_prompts": len(train_items),
            "n_eval_prompts": len(eval_items),
            "ppo": cfg.__dict__,
        },
    )

    # before training the policy IS the reference (the SFT model): evaluate with the policy adapter as reference
    models.ref_adapter = POLICY
    before_path = out / "eval_before.jsonl"
    if before_path.exists():
        before = read_jsonl(before_path)
    else:
        before = evaluate(models, eval_items, cfg, cfg.seed + 1) if eval_items else []
        write_jsonl(before_path, before)
    stats_path = out / "reward_stats.json"
    if stats_path.exists():
        from dnfbot.io import read_json

        stats = read_json(stats_path)
    else:
        norm = [train_items[i] for i in batch_indices(1, len(train_items), cfg.norm_samples, cfg.seed + 7)]
        with fixed_seed(cfg.seed + 2):
            scores = rollout(models, [ids for _, ids in norm], cfg).scores
        stats = {
            "mean": float(scores.mean()),
            "std": max(float(scores.std()) if len(scores) > 1 else 1.0, 1e-3),
        }
        if not cfg.normalize_reward:
            stats = {"mean": 0.0, "std": 1.0}
        atomic_write_json(stats_path, stats)
    reward_fn = RewardFunction(models, stats["mean"], stats["std"], cfg.no_eos_penalty)

    dataset = Dataset.from_list([{"prompt": model_prompt(p)} for p, _ in train_items])
    writer = MetricsWriter(out / "metrics.jsonl", total_steps=cfg.steps, echo=show_progress)
    if ckpt is not None:
        writer.event("resume", step=int(ckpt.name.split("-")[-1]))

    class _Log(TrainerCallback):
        def __init__(self) -> None:
            self.t = time.time()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            if "train_runtime" in logs:
                return
            rec = {ours: logs[k] for k, ours in _LOG_KEYS.items() if isinstance(logs.get(k), int | float)}
            raw = reward_fn.pop_mean()
            if raw is not None:
                rec["reward"] = raw
            if isinstance(logs.get("reward"), int | float):
                rec["score_normalized"] = logs["reward"]
            if "kl_per_token" in rec and "response_length" in rec:
                rec["kl"] = (
                    rec["kl_per_token"] * rec["response_length"]
                )  # ~ nats per response, as PPO logs it
            now = time.time()
            if "response_length" in rec:
                rec["tokens_per_s"] = rec["response_length"] * cfg.batch_size / max(now - self.t, 1e-9)
            self.t = now
            writer.log(state.global_step, **rec)

    trainer_cls = GRPOTrainer if algo == "grpo" else RLOOTrainer
    trainer = trainer_cls(
        model=models.lm,
        reward_funcs=reward_fn,
        args=_trl_config(algo, cfg, out, group_size),
        train_dataset=dataset,
        processing_class=models.tokenizer,
        callbacks=[_Log()],
    )
    quiet_trainer(trainer)
    t_run = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    finally:
        writer.close()

    models.lm.set_adapter(POLICY)
    models.ref_adapter = "ref" if "ref" in models.lm.peft_config else None
    save_policy(models, out / "adapter", value_head=False)
    after = evaluate(models, eval_items, cfg, cfg.seed + 1) if eval_items else []
    write_jsonl(out / "eval_after.jsonl", after)
    frozen = reference_is_frozen(models, eval_items, before, cfg)
    return finish_summary(
        out, algo, cfg.steps, before, after, frozen, models, str(ckpt) if ckpt else None, time.time() - t_run
    )
