"""`dnfbot train ppo --algo grpo|rloo`: TRL's GRPOTrainer / RLOOTrainer on the same data, reward model and report.

What is shared with our PPO (rlhf/ppo.py, through rlhf/run.py), so that the runs compare like for like:
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

import os
import time
from pathlib import Path
from typing import Any

import torch

from dnfbot.errors import InputError
from dnfbot.formats import model_prompt
from dnfbot.io import atomic_write_json, read_json
from dnfbot.train.common import MetricsWriter, last_complete_checkpoint, quiet_trainer
from dnfbot.train.options import PPOOptions
from dnfbot.train.rlhf.models import POLICY, PPOModels
from dnfbot.train.rlhf.rollout import left_pad
from dnfbot.train.rlhf.run import (
    evaluate_after,
    evaluate_before,
    finish_summary,
    save_policy,
    score_statistics,
    start_run,
)

TRL_ALGOS = ("grpo", "rloo")

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


def updates_per_batch(cfg: PPOOptions) -> int:
    """Optimizer steps per rollout batch — PPO's ppo_epochs x minibatches, given to TRL too (num_iterations epochs
    over the generation batch, one step per minibatch), so that a comparison makes as many updates as PPO."""
    return cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size)


def _trl_config(cfg: PPOOptions, out: Path) -> Any:
    from trl import GRPOConfig, RLOOConfig

    on_gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    k = updates_per_batch(cfg)
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "trl"),
        max_steps=cfg.steps * k,  # TRL counts optimizer steps
        # the PPO batch shapes: micro-batches per forward/backward, accumulated over a minibatch, batch_size
        # completions generated per rollout (group_size per prompt) and reused for ppo_epochs passes
        per_device_train_batch_size=max(cfg.micro_batch_size // world, 1),
        gradient_accumulation_steps=cfg.mini_batch_size // cfg.micro_batch_size,
        steps_per_generation=cfg.batch_size // cfg.micro_batch_size,
        num_iterations=cfg.ppo_epochs,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear" if cfg.lr_decay else "constant",
        adam_epsilon=cfg.adam_eps,
        max_grad_norm=cfg.max_grad_norm,
        beta=cfg.kl_coef,
        epsilon=cfg.cliprange,
        disable_dropout=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=1,
        save_steps=cfg.save_every * k,
        save_total_limit=max(cfg.keep_checkpoints, 1),
        seed=cfg.seed,
        report_to=[
            n for n in ([cfg.report_to] if isinstance(cfg.report_to, str) else cfg.report_to) if n != "none"
        ],
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        disable_tqdm=True,
    )
    return (GRPOConfig if cfg.algo == "grpo" else RLOOConfig)(**kwargs)


def run_trl_rl(opts: PPOOptions, *, show_progress: bool = True, **run_args: Any) -> dict[str, Any]:
    """Train with TRL's GRPO or RLOO (`opts.algo`); the same outputs as `run_ppo` (summary.json, eval_*.jsonl,
    adapter/). run_args: prompts, out_dir, sft_adapter, reward_adapter, resume (see rlhf.run.start_run)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    if opts.algo not in TRL_ALGOS:
        raise InputError(f"run_trl_rl: --algo {opts.algo} is not a TRL algorithm ({', '.join(TRL_ALGOS)})")
    if opts.batch_size % opts.group_size:
        raise InputError(
            f"--algo {opts.algo}: batch_size ({opts.batch_size}) must be a multiple of group_size ({opts.group_size})"
        )
    # no "ref" adapter of ours: TRL adds its own frozen copy of the policy adapter under that name
    run = start_run(
        opts, **run_args, find_checkpoint=lambda out: last_complete_checkpoint(out / "trl"), with_reference=False,
        gradient_checkpointing=False,
    )  # fmt: skip
    models, out, ckpt, cfg = run.models, run.out, run.checkpoint, opts
    # before training the policy IS the reference (the SFT model): evaluate with the policy adapter as reference
    models.ref_adapter = POLICY
    before = evaluate_before(run, opts)
    stats_path = out / "reward_stats.json"
    if stats_path.exists():
        stats = read_json(stats_path)
    else:
        mean, std = score_statistics(run, opts)
        stats = {"mean": mean, "std": std}
        atomic_write_json(stats_path, stats)
    reward_fn = RewardFunction(models, stats["mean"], stats["std"], cfg.no_eos_penalty)

    dataset = Dataset.from_list([{"prompt": model_prompt(p)} for p, _ in run.train_items])
    k = updates_per_batch(cfg)
    writer = MetricsWriter(out / "metrics.jsonl", total_steps=cfg.steps, echo=show_progress)
    if ckpt is not None:
        writer.event("resume", step=int(ckpt.name.split("-")[-1]) // k)

    class _Log(TrainerCallback):
        """TRL logs every optimizer step; metrics.jsonl gets one record per rollout batch, as PPO's (the last
        update's numbers, with the batch's reward)."""

        def __init__(self) -> None:
            self.t, self.reward = time.time(), None

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            if "train_runtime" in logs:
                return
            rec = {ours: logs[k] for k, ours in _LOG_KEYS.items() if isinstance(logs.get(k), int | float)}
            raw = reward_fn.pop_mean()
            if raw is not None:  # a new rollout batch was generated and scored
                now = time.time()
                if "response_length" in rec:
                    rec["tokens_per_s"] = rec["response_length"] * cfg.batch_size / max(now - self.t, 1e-9)
                self.t, self.reward = now, raw
            if self.reward is not None:
                rec["reward"] = self.reward
            if isinstance(logs.get("reward"), int | float):
                rec["score_normalized"] = logs["reward"]
            if "kl_per_token" in rec and "response_length" in rec:
                rec["kl"] = (
                    rec["kl_per_token"] * rec["response_length"]
                )  # ~ nats per response, as PPO logs it
            if state.global_step % k == 0:  # the batch's last update
                writer.log(state.global_step // k, **rec, optimizer_updates=k)

    trainer_cls = GRPOTrainer if cfg.algo == "grpo" else RLOOTrainer
    trainer = trainer_cls(
        model=models.lm,
        reward_funcs=reward_fn,
        args=_trl_config(cfg, out),
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
    after = evaluate_after(run, opts)
    return finish_summary(run, opts, before, after, str(ckpt) if ckpt else None, time.time() - t_run)
