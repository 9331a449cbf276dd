"""PPO maths against hand-computed values (no models)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from dnfbot.datasets.splits import hold_out  # noqa: E402
from dnfbot.errors import InputError  # noqa: E402
from dnfbot.train.options import PPOOptions, load_options  # noqa: E402
from dnfbot.train.rlhf.models import pool_last_non_pad, position_ids_from_mask  # noqa: E402
from dnfbot.train.rlhf.ppo import (  # noqa: E402
    KLController,
    compute_gae,
    entropy_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    shaped_rewards,
    value_loss,
)
from dnfbot.train.rlhf.rollout import Rollout, kl_estimates, logprobs_from_logits, truncate_after_eos  # noqa: E402
from dnfbot.train.rlhf.run import batch_indices  # noqa: E402

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol
    )


def test_gae_hand_computed():
    # gamma=1, lam=0.5: A2 = 1 - 0.1 = 0.9; A1 = (0 + 0.1 - 0.2) + 0.5*0.9 = 0.35; A0 = (0.2 - 0.5) + 0.5*0.35
    adv, ret = compute_gae(
        T([[0.0, 0.0, 1.0]]), T([[0.5, 0.2, 0.1]]), T([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.5
    )
    assert close(adv, [[-0.125, 0.35, 0.9]])
    assert close(ret, [[0.375, 0.55, 1.0]])


def test_gae_discount_and_mask():
    # gamma=0.9, lam=1 -> Monte-Carlo: A_t = sum_k 0.9^k r_{t+k} - V_t
    adv, ret = compute_gae(
        T([[1.0, 0.0, 2.0]]), T([[0.0, 0.0, 0.0]]), T([[1.0, 1.0, 1.0]]), gamma=0.9, lam=1.0
    )
    assert close(ret, [[1 + 0.81 * 2, 0.9 * 2, 2.0]])
    # padded tail: its reward/value (5, 9) must not leak into the real tokens
    adv, ret = compute_gae(
        T([[0.0, 1.0, 5.0]]), T([[0.5, 0.2, 9.0]]), T([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.5
    )
    assert close(adv, [[0.1, 0.8, 0.0]])
    assert close(ret, [[0.6, 1.0, 0.0]])


def test_whitening():
    x, m = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    assert close(masked_mean(x, m), 2.0)
    assert close(masked_var(x, m), 2 / 3)  # population variance, as lm-human-preferences
    s = math.sqrt(1.5)
    assert close(masked_whiten(x, m), [[-s, 0.0, s, 0.0]], tol=1e-4)
    assert close(masked_whiten(x, m, shift_mean=False), [[2 - s, 2.0, 2 + s, 0.0]], tol=1e-4)
    w = masked_whiten(torch.randn(4, 7) * 3 + 5, torch.ones(4, 7))
    assert abs(float(w.mean())) < 1e-5 and abs(float(w.std(unbiased=False)) - 1) < 1e-3


def test_whitening_over_processes_equals_whitening_the_whole_batch():
    """Each rank whitens its half with statistics summed over both halves (Dist.total): the result is the whole
    batch's whitening, not two separately whitened halves."""
    x = torch.randn(6, 5) * 2 + 3
    m = (torch.rand(6, 5) > 0.3).float()
    halves = [(x[:3], m[:3]), (x[3:], m[3:])]

    def whiten_half(i: int) -> torch.Tensor:
        ox, om = halves[1 - i]  # what all_reduce adds: the other rank's count, sum and squared deviations
        calls: list[torch.Tensor] = []

        def total(t: torch.Tensor) -> torch.Tensor:
            calls.append(t)
            if len(calls) == 1:
                return t + om.sum()
            if len(calls) == 2:
                return t + (ox * om).sum()
            mean = (calls[1] + (ox * om).sum()) / (calls[0] + om.sum())
            return t + ((ox - mean) ** 2 * om).sum()

        return masked_whiten(halves[i][0], halves[i][1], total=total)

    together = torch.cat([whiten_half(0), whiten_half(1)])
    assert close(together, masked_whiten(x, m), tol=1e-5)
    assert not close(torch.cat([masked_whiten(*halves[0]), masked_whiten(*halves[1])]), masked_whiten(x, m))


def test_policy_loss_clipping():
    logp, old = torch.log(T([[0.5, 0.25]])), torch.log(T([[0.25, 0.25]]))  # ratios 2 and 1
    loss, st = policy_loss(logp, old, T([[1.0, -1.0]]), T([[1.0, 1.0]]), cliprange=0.2)
    # token 1: max(-2, -1.2) = -1.2 (clipped); token 2: max(1, 1) = 1 -> mean -0.1
    assert close(loss, -0.1)
    assert close(st["clipfrac"], 0.5)
    assert close(st["approxkl"], 0.25 * math.log(2) ** 2)
    # negative advantage, ratio 0.5 < 1 - eps: the pessimistic (clipped) term wins: max(0.5, 0.8)
    loss, st = policy_loss(torch.log(T([[0.1]])), torch.log(T([[0.2]])), T([[-1.0]]), T([[1.0]]), 0.2)
    assert close(loss, 0.8) and close(st["clipfrac"], 1.0)
    # masked tokens do not count
    loss, _ = policy_loss(logp, old, T([[1.0, -1.0]]), T([[1.0, 0.0]]), cliprange=0.2)
    assert close(loss, -1.2)


def test_policy_loss_gradient_is_zero_when_clipped():
    logp = torch.log(T([[0.5]])).requires_grad_()
    loss, _ = policy_loss(logp, torch.log(T([[0.25]])), T([[1.0]]), T([[1.0]]), 0.2)
    loss.backward()
    assert float(logp.grad.abs().sum()) == 0.0


def test_value_loss_clipping():
    loss, st = value_loss(
        T([[1.0, 0.0]]), T([[0.5, 0.0]]), T([[2.0, 1.0]]), T([[1.0, 1.0]]), cliprange_value=0.2
    )
    # clipped V = 0.7 -> (0.7-2)^2 = 1.69 > (1-2)^2 = 1; token 2: 1 -> 0.5 * mean(1.69, 1)
    assert close(loss, 0.5 * (1.69 + 1.0) / 2)
    assert close(st["vf_clipfrac"], 0.5)


def test_kl_estimates_hand_computed():
    k1, k3 = kl_estimates(torch.log(T([0.5])), torch.log(T([0.25])))
    assert close(k1, math.log(2))
    assert close(k3, 0.5 - 1 + math.log(2))


def test_kl_estimators_are_unbiased():
    p, q = T([0.7, 0.2, 0.1]), T([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k1, k3 = kl_estimates(p.log()[x], q.log()[x])
    assert abs(float(k1.mean()) - exact) < 0.01
    assert abs(float(k3.mean()) - exact) < 0.01
    assert float(k3.min()) >= 0


def test_logprobs_and_entropy():
    logits = torch.log(T([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    assert close(logprobs_from_logits(logits, T([[1, 2]])), [[math.log(0.25), math.log(1 / 3)]])
    assert close(entropy_from_logits(logits), [[1.5 * math.log(2), math.log(3)]])


def test_adaptive_kl_controller():
    kl = KLController(0.1, adaptive=True, target=6.0, horizon=10000)
    kl.update(12.0, 16)  # error clipped to +0.2
    assert math.isclose(kl.value, 0.1 * (1 + 0.2 * 16 / 10000))
    kl.update(6.0, 16)
    assert math.isclose(kl.value, 0.1 * (1 + 0.2 * 16 / 10000))
    kl.update(3.0, 10000)  # error -0.5 -> -0.2
    assert math.isclose(kl.value, 0.1 * (1 + 0.2 * 16 / 10000) * 0.8)
    fixed = KLController(0.1)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.1


def test_truncate_after_eos_and_padding_helpers():
    ids, mask, has_eos = truncate_after_eos(T([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]]), eos_id=2, pad_id=0)
    assert ids.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    assert position_ids_from_mask(T([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 3],
    ]
    # a sequence classifier reads the rightmost non-pad token (pad == eos for polyglot-ko)
    assert pool_last_non_pad(T([[2, 2, 5, 6, 2, 2], [4, 4, 4, 4, 4, 4]]), pad_id=2).tolist() == [3, 5]


def test_shaped_rewards():
    cfg = PPOOptions(no_eos_penalty=1.0)
    ro = Rollout(
        query_ids=T([[1], [1]]),
        query_mask=T([[1], [1]]),
        response_ids=T([[5, 2, 0], [5, 6, 7]]),
        response_mask=T([[1, 1, 0], [1, 1, 1]]),
        has_eos=T([True, False]),
        logprobs=T([[-1.0, -1.0, 0.0], [-1.0, -2.0, -1.0]]),
        ref_logprobs=T([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]]),
        values=torch.zeros(2, 3),
        scores=T([3.0, 1.0]),
    )
    rewards, scores, k1 = shaped_rewards(ro, kl_coef=0.1, score_mean=1.0, score_std=2.0, cfg=cfg)
    # row 0: k1 = [0.5, 0, -]; score (3-1)/2 = 1 on the EOS token. row 1: k1 = [0, -1, 0]; (1-1)/2 - 1 (no EOS)
    assert close(scores, [1.0, -1.0])
    assert close(k1, [[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]])
    assert close(rewards, [[-0.05, 1.0, 0.0], [0.0, 0.1, -1.0]])


def test_prompt_split_and_batches_are_deterministic():
    prompts = [f"q{i}" for i in range(10)]
    train, held = hold_out(prompts, 3, seed=0)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == sorted(prompts)
    assert hold_out(prompts, 3, seed=0) == (train, held)
    seen = (
        batch_indices(1, 7, 4, 0) + batch_indices(2, 7, 4, 0)[:3]
    )  # the first epoch covers every prompt once
    assert sorted(seen) == list(range(7))
    assert batch_indices(3, 7, 4, 0) == batch_indices(3, 7, 4, 0)


def test_config_validation(tmp_path):
    with pytest.raises(InputError, match="multiple"):
        load_options("ppo", flags={"batch_size": 6, "mini_batch_size": 4})
    f = tmp_path / "ppo.yaml"
    f.write_text("ppo:\n  steps: 3\n  klcoef: 0.1\n", encoding="utf-8")
    with pytest.raises(InputError, match=f"{f}: unknown key 'ppo.klcoef'"):
        load_options("ppo", f)
    f.write_text("steps: 3\nkl_coef: 0.1\n", encoding="utf-8")  # stage options belong in their section
    with pytest.raises(InputError, match=f"{f}: unknown key 'steps'.*ppo"):
        load_options("ppo", f)
    f.write_text("ppo:\n  steps: 3\n  kl_coef: 0.1\n", encoding="utf-8")
    cfg = load_options("ppo", f, {"lr": 0.5, "steps": None})
    assert (cfg.steps, cfg.kl_coef, cfg.lr) == (3, 0.1, 0.5)
