"""RLHF with PPO: policy, frozen reference and reward model on ONE copy of the base weights.

`dnfbot train ppo` runs this file. It is meant to be read top to bottom (CleanRL style):

    1. PPOConfig           every hyper-parameter, with its default, in one dataclass
    2. the maths           whitening, KL estimates, GAE, the clipped policy and value losses (pure tensor code)
    3. the models          (in train/ppo_models.py) policy = base + trainable LoRA adapter + scalar value head;
                           reference = the SAME base with a frozen copy of the SFT adapter (or adapters disabled);
                           reward = the reward model's LoRA adapter as a third adapter on the same base. The base
                           weights exist once (also in 4-bit); this file sees them through `PPOModels`.
    4. rollout             sample responses, truncate at EOS, re-compute log-probs, reference log-probs, values,
                           reward-model scores
    5. ppo_step            per-token KL penalty + score at the last token -> GAE -> whitened advantages ->
                           several epochs of clipped policy/value updates over shuffled minibatches
    6. run_ppo             data, evaluation before/after on held-out prompts, logs, checkpoints, resume, summary

The reference is a frozen copy of the SFT adapter, not "adapters disabled" (that would be the pre-SFT base):
see train/ppo_models.py for why, and for how the three roles share one base.

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

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dnfbot.errors import InputError
from dnfbot.io import atomic_write_json, iter_jsonl, read_json, read_jsonl, write_jsonl
from dnfbot.train.common import MetricsWriter, model_prompt, read_metrics, write_summary
from dnfbot.train.ppo_models import (
    POLICY,
    PPOModels,
    build_models,
    models_storage_bytes,
    read_adapter_weights,
)

# ----------------------------------------------------------------------------------------------------------------
# 1. Hyper-parameters
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    # rollout
    steps: int = 200  # PPO iterations; each = one rollout batch + `ppo_epochs` epochs of updates
    batch_size: int = 16  # prompts (= episodes) per rollout
    mini_batch_size: int = 4  # episodes per optimizer step
    micro_batch_size: int = 4  # episodes per forward/backward (gradient accumulation inside a minibatch)
    forward_batch_size: int = 8  # episodes per no-grad forward pass / generate() call in the rollout
    ppo_epochs: int = 4
    max_prompt_tokens: int = 256  # longer prompts are skipped
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    # reward shaping
    kl_coef: float = 0.05  # beta of the per-token KL penalty (initial value when adaptive)
    adaptive_kl: bool = False
    target_kl: float = 6.0  # nats per sequence, for the adaptive controller
    kl_horizon: int = 10000  # episodes
    no_eos_penalty: float = 1.0  # subtracted from the (normalised) score of responses without EOS; 0 disables
    normalize_reward: bool = True  # (score - mean) / std with statistics of the initial policy's responses
    norm_samples: int = 64  # prompts used for those statistics
    whiten_rewards: bool = False
    # PPO
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    lr: float = 2e-5
    adam_eps: float = 1e-5
    lr_decay: bool = True  # linear decay to 0 over `steps`
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # evaluation, logging, checkpoints
    eval_prompts: int = 16  # held-out prompts scored before and after training
    save_every: int = 20  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    seed: int = 0

    def validate(self) -> None:
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise InputError(
                f"ppo config: batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                f"({self.mini_batch_size}), which must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        for name in (
            "steps",
            "batch_size",
            "ppo_epochs",
            "max_new_tokens",
            "forward_batch_size",
            "save_every",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"ppo config: {name} must be >= 1")
        if not self.temperature > 0:
            raise InputError("ppo config: temperature must be > 0")


def load_ppo_config(path: str | Path | None = None, **overrides: Any) -> PPOConfig:
    """Defaults, then a YAML/JSON file of PPOConfig fields, then explicit overrides (None = not given)."""
    values: dict[str, Any] = {}
    if path:
        import yaml

        from dnfbot.io import read_text

        data = yaml.safe_load(read_text(path)) or {}
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of PPO settings")
        values.update(data.get("ppo", data))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path or 'ppo config'}: unknown PPO setting(s): {', '.join(unknown)}")
    cfg = PPOConfig(**values)
    cfg.validate()
    return cfg


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


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) for each position: logits (B, T, V), tokens (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = logsumexp(z) - sum p*z, per position."""
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimators of KL(pi || pi_ref) for tokens sampled from pi (Schulman, "Approximating KL").

    k1 = log pi - log pi_ref   (unbiased, can be negative per token; used in the reward)
    k3 = (r - 1) - log r with r = pi_ref / pi   (unbiased, always >= 0; logged)"""
    k1 = logprobs - ref_logprobs
    log_r = ref_logprobs - logprobs
    k3 = torch.exp(log_r) - 1 - log_r
    return k1, k3


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


def truncate_after_eos(
    responses: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep tokens up to and including the first EOS; pad the rest.

    Returns (responses, mask, has_eos): mask is 1 on kept tokens (the EOS itself is an action, so it is kept)."""
    is_eos = responses == eos_id
    has_eos = is_eos.any(dim=1)
    T = responses.shape[1]
    first_eos = torch.where(
        has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, T - 1, dtype=torch.long)
    )
    mask = (torch.arange(T, device=responses.device)[None, :] <= first_eos[:, None]).long()
    return responses.masked_fill(mask == 0, pad_id), mask, has_eos


# ----------------------------------------------------------------------------------------------------------------
# 4. Rollout
# ----------------------------------------------------------------------------------------------------------------


def policy_forward(
    models: PPOModels, ids: torch.Tensor, mask: torch.Tensor, q_len: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits / T, log-probs of the taken tokens, values) at the response positions (query length q_len)."""
    logits, values = models.policy_logits_and_values(ids, mask, q_len, temperature)
    return logits, logprobs_from_logits(logits, ids[:, q_len:]), values


@torch.no_grad()
def reference_logprobs(
    models: PPOModels, ids: torch.Tensor, mask: torch.Tensor, q_len: int, temperature: float
) -> torch.Tensor:
    """Log-probs of the response tokens under the frozen reference."""
    return logprobs_from_logits(models.ref_logits(ids, mask, q_len, temperature), ids[:, q_len:])


@dataclass
class Rollout:
    query_ids: torch.Tensor  # (B, Q) left-padded
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # (B, R) pad after EOS
    response_mask: torch.Tensor  # 1 on response tokens up to and including EOS
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, R) under the sampling policy (temperature-scaled)
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) raw reward-model scores

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _pad_right(t: torch.Tensor, width: int, value: int | float) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


@torch.no_grad()
def rollout(models: PPOModels, queries: list[list[int]], cfg: PPOConfig) -> Rollout:
    """Sample one response per query, then score everything with no-grad forward passes in chunks."""
    from transformers import GenerationConfig

    tok, lm, device = models.tokenizer, models.lm, models.device
    gen = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    q_ids, q_mask = left_pad(queries, tok.pad_token_id)
    q_len = q_ids.shape[1]
    lm.eval()
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(queries), cfg.forward_batch_size):
        qi, qm = (
            q_ids[i : i + cfg.forward_batch_size].to(device),
            q_mask[i : i + cfg.forward_batch_size].to(device),
        )
        out = lm.generate(input_ids=qi, attention_mask=qm, generation_config=gen)
        resp, r_mask, has_eos = truncate_after_eos(out[:, q_len:], tok.eos_token_id, tok.pad_token_id)
        ids, mask = torch.cat([qi, resp], 1), torch.cat([qm, r_mask], 1)
        _, logp, values = policy_forward(models, ids, mask, q_len, cfg.temperature)
        ref_logp = reference_logprobs(models, ids, mask, q_len, cfg.temperature)
        scores = models.reward.score(ids, mask)
        parts.append(
            dict(resp=resp, r_mask=r_mask, has_eos=has_eos, logp=logp, ref=ref_logp, v=values, s=scores)
        )
    width = max(p["resp"].shape[1] for p in parts)

    def cat(key: str, value: float) -> torch.Tensor:
        return torch.cat([_pad_right(p[key], width, value) for p in parts], 0)

    r_mask = cat("r_mask", 0)
    return Rollout(
        query_ids=q_ids.to(device),
        query_mask=q_mask.to(device),
        response_ids=cat("resp", tok.pad_token_id),
        response_mask=r_mask,
        has_eos=torch.cat([p["has_eos"] for p in parts]),
        logprobs=cat("logp", 0.0) * r_mask,
        ref_logprobs=cat("ref", 0.0) * r_mask,
        values=cat("v", 0.0) * r_mask,
        scores=torch.cat([p["s"] for p in parts]),
    )


# ----------------------------------------------------------------------------------------------------------------
# 5. One PPO step: rewards -> advantages -> clipped updates
# ----------------------------------------------------------------------------------------------------------------


def shaped_rewards(
    ro: Rollout, kl_coef: float, score_mean: float, score_std: float, cfg: PPOConfig
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
    cfg: PPOConfig,
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
# 6. The run: data, evaluation, logs, checkpoints, resume, summary
# ----------------------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from .jsonl ({"prompt": ...} per line) or .json (a list of such objects or of strings).

    A missing or non-text 'prompt' is an error; an empty one is skipped (the public KoChatGPT PPO file has three)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = list(iter_jsonl(path))
        where = [f"{path}:{i + 1}" for i in range(len(records))]
    else:
        data = read_json(path)
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of {{'prompt': ...}} objects")
        records = [r if isinstance(r, dict) else {"prompt": r} for r in data]
        where = [f"{path}: item {i}" for i in range(len(records))]
    prompts = []
    for rec, w in zip(records, where, strict=True):
        p = rec.get("prompt")
        if not isinstance(p, str):
            raise InputError(f"{w}: missing field 'prompt'")
        if p.strip():
            prompts.append(p.strip())
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


def encode_queries(prompts: list[str], tokenizer: Any, max_tokens: int) -> list[tuple[str, list[int]]]:
    out = []
    for p in prompts:
        # the exact prompt text SFT and RM were trained on ('### 질문: …\n\n### 답변:'), see train.common
        ids = tokenizer(model_prompt(p), add_special_tokens=False)["input_ids"]
        if 0 < len(ids) <= max_tokens:
            out.append((p, ids))
    return out


def split_prompts(prompts: list[str], n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic held-out split: (train, eval)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=g).tolist()
    n_eval = min(n_eval, max(0, len(prompts) - 1))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Prompts for `step` (1-based): consecutive slices of a fresh permutation per epoch — no state to save."""
    out, cache = [], {}
    for pos in range((step - 1) * batch_size, step * batch_size):
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)
            ).tolist()
        out.append(cache[epoch][pos % n])
    return out


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Run with a fixed seed without disturbing the training RNG stream (CPU and the current GPU)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(models: PPOModels, items: list[tuple[str, list[int]]], cfg: PPOConfig, seed: int) -> list[dict]:
    """Sample one response per held-out prompt with a fixed seed; score, KL to the reference, length."""
    with fixed_seed(seed):
        ro = rollout(models, [ids for _, ids in items], cfg)
    k1, _ = kl_estimates(ro.logprobs, ro.ref_logprobs)
    records = []
    for i, (prompt, _) in enumerate(items):
        m = ro.response_mask[i].bool()
        resp = ro.response_ids[i][m].tolist()
        records.append(
            {
                "prompt": prompt,
                "response": models.tokenizer.decode(resp, skip_special_tokens=True),
                "reward": float(ro.scores[i]),
                "kl": float((k1[i] * m).sum()),
                "length": len(resp),
                "has_eos": bool(ro.has_eos[i]),
                "response_ids": resp,
                "ref_logprob": float(ro.ref_logprobs[i][m].sum()),
            }
        )
    return records


@torch.no_grad()
def reference_logprob_sums(
    models: PPOModels, items: list[tuple[str, list[int]]], records: list[dict], cfg: PPOConfig
) -> list[float]:
    """Reference log-prob of given (query, response) pairs — to prove the reference did not move."""
    q_ids, q_mask = left_pad([ids for _, ids in items], models.tokenizer.pad_token_id)
    width = max(len(r["response_ids"]) for r in records)
    out = []
    for i in range(0, len(items), cfg.forward_batch_size):
        rows = records[i : i + cfg.forward_batch_size]
        resp = torch.full((len(rows), width), models.tokenizer.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros_like(resp)
        for j, r in enumerate(rows):
            resp[j, : len(r["response_ids"])] = torch.tensor(r["response_ids"], dtype=torch.long)
            r_mask[j, : len(r["response_ids"])] = 1
        ids = torch.cat([q_ids[i : i + len(rows)], resp], 1).to(models.device)
        mask = torch.cat([q_mask[i : i + len(rows)], r_mask], 1).to(models.device)
        logp = reference_logprobs(models, ids, mask, q_ids.shape[1], cfg.temperature)
        out.extend(float(x) for x in (logp * r_mask.to(logp.device)).sum(1))
    return out


def _summary_of(records: list[dict]) -> dict[str, float]:
    n = max(len(records), 1)
    return {
        "reward": sum(r["reward"] for r in records) / n,
        "kl": sum(r["kl"] for r in records) / n,
        "length": sum(r["length"] for r in records) / n,
        "eos_rate": sum(r["has_eos"] for r in records) / n,
    }


# --- checkpoints -------------------------------------------------------------------------------------------------


def save_policy(models: PPOModels, out: Path, value_head: bool = True) -> None:
    """Policy adapter (+ value head + tokenizer) in PEFT format: base + this adapter = the trained policy."""
    from safetensors.torch import save_file

    models.lm.save_pretrained(str(out), selected_adapters=[POLICY])
    models.tokenizer.save_pretrained(str(out))
    if not value_head:
        return
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in models.value_head.state_dict().items()},
        str(out / "value_head.safetensors"),
    )


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


# --- the loop ------------------------------------------------------------------------------------------------------


def run_ppo(
    *,
    model: str,
    prompts: str | Path,
    out_dir: str | Path,
    sft_adapter: str | Path | None = None,
    reward_adapter: str | Path | None = None,
    reward_model: str | None = None,
    cfg: PPOConfig | None = None,
    load_in_4bit: bool = False,
    resume: bool = True,
    limit: int | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train; returns (and writes to OUT/summary.json) the run summary. Re-running with the same OUT resumes."""
    cfg = cfg or PPOConfig()
    cfg.validate()
    out = Path(out_dir)
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and latest_checkpoint(out) is not None:
        raise InputError(f"{out}: already holds checkpoints; resume (the default) or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    all_prompts = load_prompts(prompts)[: limit or None]
    models = build_models(
        model,
        sft_adapter=sft_adapter,
        reward_adapter=reward_adapter,
        reward_model=reward_model,
        load_in_4bit=load_in_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
    )
    train_prompts, eval_prompts = split_prompts(all_prompts, cfg.eval_prompts, cfg.seed)
    train_items = encode_queries(train_prompts, models.tokenizer, cfg.max_prompt_tokens)
    eval_items = encode_queries(eval_prompts, models.tokenizer, cfg.max_prompt_tokens)
    if len(train_items) < 1:
        raise InputError(f"{prompts}: no training prompt fits in max_prompt_tokens={cfg.max_prompt_tokens}")
    atomic_write_json(
        out / "config.json",
        {
            "algo": "ppo",
            "model": str(model),
            "sft_adapter": _str(sft_adapter),
            "reward_adapter": _str(reward_adapter),
            "reward_model": _str(reward_model),
            "prompts": str(prompts),
            "load_in_4bit": load_in_4bit,
            "n_train_prompts": len(train_items),
            "n_eval_prompts": len(eval_items),
            "ppo": asdict(cfg),
        },
    )

    optimizer = torch.optim.AdamW(
        models.trainable_parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=0.0
    )
    kl = KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon)
    eval_seed = cfg.seed + 1

    # held-out evaluation of the initial policy (kept across resumes)
    before_path = out / "eval_before.jsonl"
    if before_path.exists():
        before = read_jsonl(before_path)
    else:
        before = evaluate(models, eval_items, cfg, eval_seed) if eval_items else []
        write_jsonl(before_path, before)

    start_step, resumed_from = 0, None
    if ckpt is not None:
        start_step, (score_mean, score_std) = load_checkpoint(ckpt, models, optimizer, kl)
        resumed_from = str(ckpt)
    elif cfg.normalize_reward:
        norm_items = [
            train_items[i] for i in batch_indices(1, len(train_items), cfg.norm_samples, cfg.seed + 7)
        ]
        with fixed_seed(cfg.seed + 2):
            scores = rollout(models, [ids for _, ids in norm_items], cfg).scores
        score_mean, score_std = (
            float(scores.mean()),
            max(float(scores.std()) if len(scores) > 1 else 1.0, 1e-3),
        )
    else:
        score_mean, score_std = 0.0, 1.0

    gen = torch.Generator().manual_seed(cfg.seed)
    log = MetricsWriter(out / "metrics.jsonl", total_steps=cfg.steps, echo=show_progress)
    if resumed_from:
        log.event("resume", step=start_step)
    t_run = time.time()
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            gen.manual_seed(cfg.seed * 7919 + step)  # minibatch order depends on the step only (resumable)
            if cfg.lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * (1.0 - (step - 1) / cfg.steps)
            t0 = time.time()
            batch = [train_items[i] for i in batch_indices(step, len(train_items), cfg.batch_size, cfg.seed)]
            ro = rollout(models, [ids for _, ids in batch], cfg)
            t_rollout = time.time() - t0
            metrics = ppo_step(models, optimizer, ro, kl, cfg, score_mean, score_std, gen)
            kl.update(metrics["kl"], cfg.batch_size)
            elapsed = time.time() - t0
            metrics.update(
                lr=optimizer.param_groups[0]["lr"],
                step_s=elapsed,
                rollout_s=t_rollout,
                tokens_per_s=int(ro.response_mask.sum()) / max(elapsed, 1e-9),
            )
            log.log(step, **metrics)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(
                    out, step, models, optimizer, kl, (score_mean, score_std), cfg.keep_checkpoints
                )
            if on_step is not None:
                on_step(step, metrics)
    finally:
        log.close()

    save_policy(models, out / "adapter")
    after = evaluate(models, eval_items, cfg, eval_seed) if eval_items else []
    write_jsonl(out / "eval_after.jsonl", after)
    frozen = reference_is_frozen(models, eval_items, before, cfg)
    summary = finish_summary(
        out, "ppo", cfg.steps, before, after, frozen, models, resumed_from, time.time() - t_run
    )
    return summary


def reference_is_frozen(models: PPOModels, eval_items: list, before: list[dict], cfg: PPOConfig) -> bool:
    """The reference log-probs of the held-out 'before' responses are the same now as at the start."""
    if not before:
        return True
    now = reference_logprob_sums(models, eval_items, before, cfg)
    return all(
        math.isclose(a, r["ref_logprob"], rel_tol=1e-5, abs_tol=1e-4)
        for a, r in zip(now, before, strict=True)
    )


def finish_summary(
    out: Path,
    algo: str,
    steps: int,
    before: list[dict],
    after: list[dict],
    frozen: bool,
    models: PPOModels,
    resumed_from: str | None,
    elapsed: float,
) -> dict[str, Any]:
    b, a = _summary_of(before), _summary_of(after)
    metrics = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    tps = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    summary = {
        "output_dir": str(out),
        "algo": algo,
        "steps": steps,
        "reward_before": b["reward"],
        "reward_after": a["reward"],
        "mean_kl": a["kl"],
        "response_length_before": b["length"],
        "response_length_after": a["length"],
        "eos_rate_before": b["eos_rate"],
        "eos_rate_after": a["eos_rate"],
        "n_eval_prompts": len(after),
        "reference_frozen": frozen,
        "reference_shares_base": models.ref_model is None,
        "reward_shares_base": models.reward.shared,
        "parameter_bytes": models_storage_bytes(models),
        "tokens_per_s": sum(tps) / len(tps) if tps else None,
        "resumed_from": resumed_from,
        "elapsed_s": round(elapsed, 1),
        "adapter": str(out / "adapter"),
    }
    write_summary(out, summary)
    return summary


def _str(x: Any) -> str | None:
    return None if x is None else str(x)
