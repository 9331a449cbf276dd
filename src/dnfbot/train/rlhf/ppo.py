"""RLHF with PPO: policy, frozen reference and reward model on ONE copy of the base weights.

`dnfbot train ppo` runs this file. It is meant to be read top to bottom (CleanRL style):

    1. PPOOptions          every hyper-parameter, with its default and its doc, in one dataclass — kept in
                           train/options.py beside the other stages' options (the one run-config schema, which
                           validates a config and answers --help without importing torch)
    2. the maths           whitening, GAE, the clipped policy and value losses, the KL controller (pure tensors)
    3. the models          (rlhf/models.py) policy = base + trainable LoRA adapter + scalar value head;
                           reference = the SAME base with a frozen copy of the SFT adapter (or adapters disabled);
                           reward = the reward model's LoRA adapter as a third adapter on the same base. The base
                           weights exist once (also in 4-bit); this file sees them through `PPOModels`.
    4. rollout             (rlhf/rollout.py) sample responses, truncate at EOS, re-compute log-probs, reference
                           log-probs, the KL estimators, values, reward-model scores
    5. ppo_step            per-token KL penalty + score at the last token -> GAE -> whitened advantages ->
                           several epochs of clipped policy/value updates over shuffled minibatches
    6. run_ppo             the loop: checkpoints and resume here; data, held-out evaluation before/after and the
                           summary in rlhf/run.py, which GRPO/RLOO through TRL (rlhf/trl.py) share

The reference is a frozen copy of the SFT adapter, not "adapters disabled" (that would be the pre-SFT base):
see rlhf/models.py for why, and for how the three roles share one base.

Implementation details of Huang et al., "The N+ Implementation Details of RLHF with PPO" (2024, and the 2023
"N Implementation Details of RLHF with PPO" it follows) that this file implements:

    - left-padded queries; position ids derived from the attention mask so padded and unpadded inputs agree
    - dropout disabled in every model (log-prob ratios are exactly 1 before the first update)
    - log-probs re-computed with a forward pass after generation, from logits divided by the sampling temperature
      (the distribution the tokens were actually sampled from)
    - responses truncated after the first EOS; everything after it is padding and masked out of every loss
    - "EOS trick": responses that never emit EOS are penalised (`no_eos_penalty`, subtracted from the score so the
      reward model's signal is kept; the paper replaces the score by -1)
    - reward-model score read at the last token of the response, exactly where the sequence classifier pools
    - reward normalisation: scores normalised with the mean/std of the initial policy's responses, so the reward
      scale (and the KL coefficient) means the same for any reward model
    - per-token KL penalty -beta * (log pi - log pi_ref) (the k1 estimator), score added at the last token
    - optional reward whitening (shift_mean=False), advantage whitening over the whole batch
    - GAE (gamma=1, lambda=0.95 by default)
    - clipped surrogate policy loss, clipped value loss (0.5 * max of squared errors)
    - several PPO epochs over shuffled minibatches per rollout batch, gradient accumulation over micro-batches
    - adaptive KL controller (Ziegler et al. 2019) or a fixed coefficient
    - Adam eps=1e-5, linear learning-rate decay, global gradient-norm clipping

Not implemented (on purpose): a separate value network initialised from the reward model (the value head sits on
the policy so that only one base model is in memory; it starts at zero = the mean normalised reward); DeepSpeed /
multi-GPU rollouts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dnfbot.errors import InputError
from dnfbot.train.common import MetricsWriter
from dnfbot.train.options import PPOOptions
from dnfbot.train.rlhf.models import POLICY, PPOModels, read_adapter_weights
from dnfbot.train.rlhf.rollout import Rollout, kl_estimates, policy_forward, rollout
from dnfbot.train.rlhf.run import (
    batch_indices,
    evaluate_after,
    evaluate_before,
    finish_summary,
    save_policy,
    score_statistics,
    start_run,
)

# ----------------------------------------------------------------------------------------------------------------
# 2. The maths (pure tensor functions; unit-tested against hand-computed values)
# ----------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance over the masked entries (unbiased=False, as TF's moments in lm-human-preferences)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (used for rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = logsumexp(z) - sum p*z, per position."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (B, T); positions where mask == 0 are ignored.

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  returns = A + V.
    V beyond the last real token is 0 (the episode ends there)."""
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(-A * r, -A * clip(r, 1-eps, 1+eps)), r = pi / pi_old."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    stats = {
        "clipfrac": masked_mean((pg2 > pg1).float(), mask).detach(),
        "approxkl": (0.5 * masked_mean(log_ratio**2, mask)).detach(),
        "ratio": masked_mean(ratio, mask).detach(),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss1, loss2), mask)
    return loss, {"vf_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach()}


class KLController:
    """Fixed beta, or the adaptive controller of Ziegler et al.: beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon."""

    def __init__(self, kl_coef: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value, self.adaptive, self.target, self.horizon = kl_coef, adaptive, target, horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        if not self.adaptive:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon


# ----------------------------------------------------------------------------------------------------------------
# 5. One PPO step: rewards -> advantages -> clipped updates
# ----------------------------------------------------------------------------------------------------------------


def shaped_rewards(
    ro: Rollout, kl_coef: float, score_mean: float, score_std: float, cfg: PPOOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * k1 on every token, + normalised score (minus the no-EOS penalty) on the last."""
    mask = ro.response_mask.float()
    k1, _ = kl_estimates(ro.logprobs, ro.ref_logprobs)
    scores = (ro.scores - score_mean) / score_std
    scores = scores - cfg.no_eos_penalty * (~ro.has_eos).float()
    rewards = -kl_coef * k1 * mask
    last = ro.response_mask.sum(1) - 1
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    return rewards, scores, k1 * mask


def ppo_step(
    models: PPOModels,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    kl: KLController,
    cfg: PPOOptions,
    score_mean: float,
    score_std: float,
    generator: torch.Generator,
) -> dict[str, float]:
    mask = ro.response_mask.float()
    rewards, norm_scores, k1 = shaped_rewards(ro, kl.value, score_mean, score_std, cfg)
    advantages, returns = compute_gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)

    models.lm.train()  # dropout is disabled; train() only switches gradient checkpointing on
    params = models.trainable_parameters()
    stats: dict[str, list[float]] = {
        k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approxkl", "entropy", "ratio")
    }
    B, q_len = ro.response_ids.shape[0], ro.query_ids.shape[1]
    ids, full_mask = ro.ids, ro.mask
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(ids.device)
        for mb_start in range(0, B, cfg.mini_batch_size):
            mb = order[mb_start : mb_start + cfg.mini_batch_size]
            optimizer.zero_grad(set_to_none=True)
            for mc_start in range(0, len(mb), cfg.micro_batch_size):
                idx = mb[mc_start : mc_start + cfg.micro_batch_size]
                r_len = int(ro.response_mask[idx].sum(1).max())  # drop all-padding columns
                m = mask[idx, :r_len]
                logits, logp, v = policy_forward(
                    models, ids[idx, : q_len + r_len], full_mask[idx, : q_len + r_len], q_len, cfg.temperature
                )
                pg, pg_stats = policy_loss(
                    logp, ro.logprobs[idx, :r_len], advantages[idx, :r_len], m, cfg.cliprange
                )
                vf, vf_stats = value_loss(
                    v, ro.values[idx, :r_len], returns[idx, :r_len], m, cfg.cliprange_value
                )
                loss = (pg + cfg.vf_coef * vf) * len(idx) / len(mb)
                loss.backward()
                with torch.no_grad():
                    stats["entropy"].append(float(masked_mean(entropy_from_logits(logits), m)))
                del logits
                stats["pg_loss"].append(float(pg.detach()))
                stats["vf_loss"].append(float(vf.detach()))
                for k, val in {**pg_stats, **vf_stats}.items():
                    stats[k].append(float(val))
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
    models.lm.eval()

    seq_kl = k1.sum(1)
    _, k3 = kl_estimates(ro.logprobs, ro.ref_logprobs)
    return {
        "reward": float(ro.scores.mean()),  # raw reward-model score
        "reward_std": float(ro.scores.std()) if B > 1 else 0.0,
        "score_normalized": float(norm_scores.mean()),
        "kl": float(seq_kl.mean()),  # nats per response, k1
        "kl_k3": float((k3 * mask).sum(1).mean()),
        "kl_coef": kl.value,
        "non_score_reward": float((-kl.value * k1).sum(1).mean()),
        "policy_loss": _mean(stats["pg_loss"]),
        "value_loss": _mean(stats["vf_loss"]),
        "clipfrac": _mean(stats["clipfrac"]),
        "vf_clipfrac": _mean(stats["vf_clipfrac"]),
        "approxkl": _mean(stats["approxkl"]),
        "ratio": _mean(stats["ratio"]),
        "entropy": _mean(stats["entropy"]),
        "response_length": float(ro.response_mask.sum(1).float().mean()),
        "eos_rate": float(ro.has_eos.float().mean()),
        "advantage_std": float(masked_var(advantages, mask).sqrt()),
        "return_mean": float(masked_mean(returns, mask)),
        "value_mean": float(masked_mean(ro.values, mask)),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# 6. The loop: optimizer, KL controller, checkpoints, resume
# ----------------------------------------------------------------------------------------------------------------


def run_ppo(
    opts: PPOOptions,
    *,
    on_step: Callable[[int, dict], None] | None = None,
    show_progress: bool = True,
    **run_args: Any,
) -> dict[str, Any]:
    """Train; returns (and writes to OUT/summary.json) the run summary. Re-running with the same OUT resumes.

    run_args: prompts, out_dir, sft_adapter, reward_adapter, resume (see rlhf.run.start_run)."""
    run = start_run(
        opts, **run_args, find_checkpoint=latest_checkpoint, with_reference=True,
        gradient_checkpointing=opts.gradient_checkpointing, echo=show_progress,
    )  # fmt: skip
    models, train_items = run.models, run.train_items
    optimizer = torch.optim.AdamW(
        models.trainable_parameters(), lr=opts.lr, eps=opts.adam_eps, weight_decay=0.0
    )
    kl = KLController(opts.kl_coef, opts.adaptive_kl, opts.target_kl, opts.kl_horizon)
    before = evaluate_before(run, opts)

    start_step, resumed_from = 0, None
    if run.checkpoint is not None:
        start_step, (score_mean, score_std) = load_checkpoint(run.checkpoint, models, optimizer, kl)
        resumed_from = str(run.checkpoint)
    else:
        score_mean, score_std = score_statistics(run, opts)

    gen = torch.Generator().manual_seed(opts.seed)
    log = MetricsWriter(run.out / "metrics.jsonl", total_steps=opts.steps, echo=show_progress)
    if resumed_from:
        log.event("resume", step=start_step)
    t_run = time.time()
    try:
        for step in range(start_step + 1, opts.steps + 1):
            gen.manual_seed(opts.seed * 7919 + step)  # minibatch order depends on the step only (resumable)
            if opts.lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = opts.lr * (1.0 - (step - 1) / opts.steps)
            t0 = time.time()
            batch = [
                train_items[i] for i in batch_indices(step, len(train_items), opts.batch_size, opts.seed)
            ]
            ro = rollout(models, [ids for _, ids in batch], opts)
            t_rollout = time.time() - t0
            metrics = ppo_step(models, optimizer, ro, kl, opts, score_mean, score_std, gen)
            kl.update(metrics["kl"], opts.batch_size)
            elapsed = time.time() - t0
            metrics.update(
                lr=optimizer.param_groups[0]["lr"],
                step_s=elapsed,
                rollout_s=t_rollout,
                tokens_per_s=int(ro.response_mask.sum()) / max(elapsed, 1e-9),
            )
            log.log(step, **metrics)
            if step % opts.save_every == 0 or step == opts.steps:
                save_checkpoint(
                    run.out, step, models, optimizer, kl, (score_mean, score_std), opts.keep_checkpoints
                )
            if on_step is not None:
                on_step(step, metrics)
    finally:
        log.close()

    save_policy(models, run.out / "adapter")
    after = evaluate_after(run, opts)
    return finish_summary(run, opts, before, after, resumed_from, time.time() - t_run)


# --- checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: Path,
    step: int,
    models: PPOModels,
    optimizer: torch.optim.Optimizer,
    kl: KLController,
    score_stats: tuple[float, float],
    keep: int,
) -> Path:
    """Write to a temp dir, then rename: a checkpoint directory is either complete or absent."""
    root = out_dir / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_policy(models, tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "kl_coef": kl.value,
        "score_mean": score_stats[0],
        "score_std": score_stats[1],
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = sorted(p for p in (out_dir / "checkpoints").glob("step-*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def load_checkpoint(
    ckpt: Path, models: PPOModels, optimizer: torch.optim.Optimizer, kl: KLController
) -> tuple[int, tuple[float, float]]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(models.lm, read_adapter_weights(ckpt), adapter_name=POLICY)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise InputError(f"{ckpt}: checkpoint adapter does not match the policy ({missing[0]} …)")
    models.value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    kl.value = state["kl_coef"]
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), (float(state["score_mean"]), float(state["score_std"]))
