"""What every RLHF algorithm does with samples: generate responses, read their log-probabilities under the policy
and the frozen reference, the per-token KL between them, the values and the reward-model scores.

PPO (ppo.py) turns a `Rollout` into shaped rewards and clipped updates; the held-out evaluation (run.py) and
TRL's GRPO/RLOO (trl.py) use the same sampling and scoring, so their numbers compare like for like.
Implementation details it follows (Huang et al., "The N+ Implementation Details of RLHF with PPO", 2024):
left-padded queries with position ids from the attention mask; log-probs re-computed after generation from
logits divided by the sampling temperature; responses truncated after the first EOS (everything after it is
padding, masked out of every loss); the reward-model score read at the last token of the response.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dnfbot.train.options import PPOOptions
from dnfbot.train.rlhf.models import PPOModels


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) for each position: logits (B, T, V), tokens (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimators of KL(pi || pi_ref) for tokens sampled from pi (Schulman, "Approximating KL").

    k1 = log pi - log pi_ref   (unbiased, can be negative per token; used in the reward)
    k3 = (r - 1) - log r with r = pi_ref / pi   (unbiased, always >= 0; logged)"""
    k1 = logprobs - ref_logprobs
    log_r = ref_logprobs - logprobs
    k3 = torch.exp(log_r) - 1 - log_r
    return k1, k3


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
    generate_s: float = 0.0  # wall time inside generate(): rollout speed = response tokens / generate_s

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Run with a fixed seed without disturbing the training RNG stream (CPU and the current GPU)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def left_pad(
    rows: list[list[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(width or 0, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def pad_right(t: torch.Tensor, width: int, value: int | float) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


@torch.no_grad()
def rollout(
    models: PPOModels,
    queries: list[list[int]],
    cfg: PPOOptions,
    *,
    seed: int | None = None,
    offset: int = 0,
    pad_to: int | None = None,
) -> Rollout:
    """Sample one response per query, then score everything with no-grad forward passes in chunks.

    seed: each generate() chunk samples with seed + its global position (`offset` + index), so a rank that rolls
    out queries offset.. of a global batch samples exactly what a single process would (rlhf/dist.py); None
    continues the global RNG stream. pad_to: left-pad queries to this width (the global batch's), for the same
    reason."""
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
    q_ids, q_mask = left_pad(queries, tok.pad_token_id, pad_to)
    q_len = q_ids.shape[1]
    lm.eval()
    parts: list[dict[str, torch.Tensor]] = []
    generate_s = 0.0
    for i in range(0, len(queries), cfg.forward_batch_size):
        qi, qm = (
            q_ids[i : i + cfg.forward_batch_size].to(device),
            q_mask[i : i + cfg.forward_batch_size].to(device),
        )
        t0 = time.perf_counter()
        with fixed_seed(seed + offset + i) if seed is not None else contextlib.nullcontext():
            out = lm.generate(input_ids=qi, attention_mask=qm, generation_config=gen)
        generate_s += time.perf_counter() - t0
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
        return torch.cat([pad_right(p[key], width, value) for p in parts], 0)

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
        generate_s=generate_s,
    )
