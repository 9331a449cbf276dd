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

Beyond the paper: the value head (on the policy, so that only one base model is in memory) is warmed up by a ridge
regression on the initial policy's returns before the first update (`value_warmup`), and a batch's epochs stop
early once an epoch's mean approx KL exceeds `target_approx_kl` (CleanRL). Several processes: rlhf/dist.py.
Not implemented (on purpose): a separate value network initialised from the reward model (a second base in
memory); DeepSpeed / FSDP (with a 4-bit base and LoRA, plain data parallelism is the sensible setting).
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
from dnfbot.train.rlhf.dist import Dist
from dnfbot.train.rlhf.models import POLICY, PPOModels, read_adapter_weights
from dnfbot.train.rlhf.rollout import Rollout, kl_estimates, policy_forward
from dnfbot.train.rlhf.run import (
    batch_indices,
    evaluate_after,
    evaluate_before,
    finish_summary,
    initial_rollout,
    rollout_share,
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


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    total: Callable[[torch.Tensor], torch.Tensor] = _same,
) -> torch.Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (used for rewards).

    total: sums a statistic over all processes (Dist.total), so a multi-process batch is whitened as one."""
    n = total(mask.sum()).clamp(min=1)
    mean = total((x * mask).sum()) / n
    var = total(((x - mean) ** 2 * mask).sum()) / n
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
    ro: Rollout,
    kl_coef: float,
    score_mean: float,
    score_std: float,
    cfg: PPOOptions,
    total: Callable[[torch.Tensor], torch.Tensor] = _same,
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
        rewards = masked_whiten(rewards, mask, shift_mean=False, total=total)
    return rewards, scores, k1 * mask


@torch.no_grad()
def warm_up_value_head(
    models: PPOModels, ro: Rollout, score_mean: float, score_std: float, cfg: PPOOptions, dist: Dist
) -> float:
    """Fit the value head to the initial policy's returns before the first update; returns the explained variance.

    A value head that starts at zero makes the first advantages pure noise around the score, and PPO spends its
    first updates (and KL budget) on them. At the start the policy is the reference, so there is no KL term and the
    return of every response token is the shaped final score; the value head is linear in the last hidden state,
    so the fit is one ridge regression on those hidden states — the sufficient statistics summed over processes,
    every rank solving the same system."""
    mask = ro.response_mask
    rewards, _, _ = shaped_rewards(ro, 0.0, score_mean, score_std, cfg, dist.total)
    returns = rewards.flip(1).cumsum(1).flip(1)  # gamma = 1: the sum of the rewards still to come
    d = models.value_head.in_features
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    xty = torch.zeros(d + 1, dtype=torch.float64)
    sums = torch.zeros(3, dtype=torch.float64)  # n, sum y, sum y^2 (for the explained variance)
    q_len = ro.query_ids.shape[1]
    for i in range(0, mask.shape[0], cfg.forward_batch_size):
        rows = slice(i, i + cfg.forward_batch_size)
        r_len = int(mask[rows].sum(1).max())
        hidden = models.policy_hidden(ro.ids[rows, : q_len + r_len], ro.mask[rows, : q_len + r_len], q_len)
        keep = mask[rows, :r_len].bool()
        h = hidden[keep].double().cpu()
        h = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
        y = returns[rows, :r_len][keep].double().cpu()
        gram += h.T @ h
        xty += h.T @ y
        sums += torch.stack([torch.tensor(float(len(y)), dtype=y.dtype), y.sum(), (y * y).sum()])
    gram, xty, sums = dist.total(gram), dist.total(xty), dist.total(sums)
    ridge = 1e-3 * float(gram.diagonal()[:d].mean()) + 1e-8
    gram[:d, :d] += ridge * torch.eye(d, dtype=gram.dtype)
    w = torch.linalg.solve(gram, xty)
    head = models.value_head
    head.weight.copy_(w[:d].to(head.weight.dtype).view_as(head.weight))
    head.bias.copy_(w[d:].to(head.bias.dtype))
    n, sy, syy = sums.tolist()
    var_y = syy / n - (sy / n) ** 2
    # residual = y'y - 2 w'X'y + w'X'Xw, with the unregularised gram
    gram[:d, :d] -= ridge * torch.eye(d, dtype=gram.dtype)
    resid = syy - 2 * float(w @ xty) + float(w @ gram @ w)
    return 1.0 - resid / n / var_y if var_y > 1e-12 else 0.0


def ppo_step(
    models: PPOModels,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    kl: KLController,
    cfg: PPOOptions,
    score_mean: float,
    score_std: float,
    generator: torch.Generator,
    dist: Dist | None = None,
    mine: range | None = None,
) -> dict[str, float]:
    """One PPO iteration on a rollout batch. With several processes `ro` holds this rank's share (`mine`, its
    positions in the global batch): the minibatches are drawn over the global batch, each rank back-propagates
    the episodes of a minibatch it holds and the gradients are summed (rlhf/dist.py)."""
    dist = dist or Dist()
    mine = mine if mine is not None else range(ro.response_ids.shape[0])
    B = cfg.batch_size if dist.world > 1 else ro.response_ids.shape[0]  # the global batch
    mask = ro.response_mask.float()
    rewards, norm_scores, k1 = shaped_rewards(ro, kl.value, score_mean, score_std, cfg, dist.total)
    advantages, returns = compute_gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask, total=dist.total)

    models.lm.train()  # dropout is disabled; train() only switches gradient checkpointing on
    params = models.trainable_parameters()
    stats: dict[str, list[float]] = {
        k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approxkl", "entropy", "ratio")
    }
    q_len = ro.query_ids.shape[1]
    ids, full_mask = ro.ids, ro.mask
    epochs_done, updates = 0, 0
    for _ in range(cfg.ppo_epochs):
        epoch_kl: list[float] = []
        order = torch.randperm(B, generator=generator).tolist()
        for mb_start in range(0, B, cfg.mini_batch_size):
            mb = order[mb_start : mb_start + cfg.mini_batch_size]
            local = [g - mine.start for g in mb if g in mine]  # this rank's episodes of the minibatch
            optimizer.zero_grad(set_to_none=True)
            for mc_start in range(0, len(local), cfg.micro_batch_size):
                idx = torch.tensor(local[mc_start : mc_start + cfg.micro_batch_size], device=ids.device)
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
                loss = (pg + cfg.vf_coef * vf) * len(idx) / len(mb)  # a share of the global minibatch
                loss.backward()
                with torch.no_grad():
                    stats["entropy"].append(float(masked_mean(entropy_from_logits(logits), m)))
                del logits
                stats["pg_loss"].append(float(pg.detach()))
                stats["vf_loss"].append(float(vf.detach()))
                for k, val in {**pg_stats, **vf_stats}.items():
                    stats[k].append(float(val))
                epoch_kl.append(float(pg_stats["approxkl"]))
            dist.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            updates += 1
        epochs_done += 1
        # approx-KL early stop (CleanRL's target_kl): the policy moved far enough on this batch; every rank
        # decides on the same all-rank mean so that they stop together
        if cfg.target_approx_kl > 0:
            mean_kl = dist.mean({"kl": _mean(epoch_kl) if epoch_kl else 0.0})["kl"]
            if mean_kl > cfg.target_approx_kl:
                break
    models.lm.eval()

    seq_kl = k1.sum(1)
    _, k3 = kl_estimates(ro.logprobs, ro.ref_logprobs)
    return dist.mean(
        {
            "reward": float(ro.scores.mean()),  # raw reward-model score
            "reward_std": float(ro.scores.std()) if len(ro.scores) > 1 else 0.0,
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
            "ppo_epochs_done": float(epochs_done),
            "optimizer_updates": float(updates),
        }
    )


def _mean(xs: list[float]) -> float:
    # 0.0, not NaN, for a rank that held no episode of any minibatch: the mean over ranks stays finite
    return sum(xs) / len(xs) if xs else 0.0


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
    Under `accelerate launch` / torchrun each process takes its share of every batch (rlhf/dist.py); rank 0
    writes the files and returns the summary, the other ranks return {}.

    run_args: prompts, out_dir, sft_adapter, reward_adapter, resume (see rlhf.run.start_run)."""
    dist = Dist.from_env()
    run = start_run(
        opts, **run_args, find_checkpoint=latest_checkpoint, with_reference=True,
        gradient_checkpointing=opts.gradient_checkpointing, echo=show_progress, dist=dist,
    )  # fmt: skip
    models, train_items = run.models, run.train_items
    optimizer = torch.optim.AdamW(
        models.trainable_parameters(), lr=opts.lr, eps=opts.adam_eps, weight_decay=0.0
    )
    kl = KLController(opts.kl_coef, opts.adaptive_kl, opts.target_kl, opts.kl_horizon)
    before = evaluate_before(run, opts)
    log = MetricsWriter(
        run.out / "metrics.jsonl", total_steps=opts.steps, echo=show_progress, report_to=opts.report_to
    )

    start_step, resumed_from = 0, None
    if run.checkpoint is not None:
        start_step, (score_mean, score_std) = load_checkpoint(run.checkpoint, models, optimizer, kl)
        resumed_from = str(run.checkpoint)
        log.event("resume", step=start_step)
    else:
        first = initial_rollout(run, opts) if opts.normalize_reward or opts.value_warmup else None
        score_mean, score_std = score_statistics(run, opts, first)
        if opts.value_warmup:
            explained = warm_up_value_head(models, first, score_mean, score_std, opts, dist)
            log.event("value_warmup", explained_variance=round(explained, 4), episodes=opts.norm_samples)

    gen = torch.Generator().manual_seed(opts.seed)
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
            # sampling seeds depend on the step and the episode's place in the batch: resumable, and the same
            # samples with any number of processes
            mine, ro = rollout_share(models, dist, batch, opts, opts.seed * 7919 + step)
            t_rollout = time.time() - t0
            metrics = ppo_step(models, optimizer, ro, kl, opts, score_mean, score_std, gen, dist, mine)
            kl.update(metrics["kl"], opts.batch_size)
            elapsed = time.time() - t0
            tokens = float(dist.total(ro.response_mask.sum().double()))  # all ranks' response tokens
            generate_s = dist.mean({"s": ro.generate_s})["s"]
            metrics.update(
                lr=optimizer.param_groups[0]["lr"],
                step_s=elapsed,
                rollout_s=t_rollout,
                generate_s=generate_s,
                # sampling speed alone (generate()), and the whole step's (rollout + scoring + updates)
                rollout_tokens_per_s=tokens / max(generate_s, 1e-9),
                tokens_per_s=tokens / max(elapsed, 1e-9),
            )
            log.log(step, **metrics)
            if step % opts.save_every == 0 or step == opts.steps:
                if dist.main:
                    save_checkpoint(
                        run.out, step, models, optimizer, kl, (score_mean, score_std), opts.keep_checkpoints
                    )
                dist.barrier()  # no rank runs ahead of a checkpoint it might have to resume from
            if on_step is not None:
                on_step(step, metrics)
    finally:
        log.close()

    if dist.main:
        save_policy(models, run.out / "adapter")
    after = evaluate_after(run, opts)
    if not dist.main:
        return {}
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
