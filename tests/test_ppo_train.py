"""PPO end to end on a tiny model with a learnable reward (support.ppo_toy): reward rises, KL stays bounded,
the reference is frozen and shares the base weights, an interrupted run resumes, the report is produced.

The toy task: a tiny random-init GPTNeoX "pre-trained" to answer with 2-5 fruit names, an SFT LoRA adapter, and a
reward-model LoRA adapter trained to prefer answers with more "사과" — all on the same base (~40 s on 2 cores)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from dnfbot.cli import app  # noqa: E402
from dnfbot.errors import InputError  # noqa: E402
from dnfbot.train.options import PPOOptions  # noqa: E402
from dnfbot.train.rlhf.models import build_models, parameter_storage  # noqa: E402
from dnfbot.train.rlhf.ppo import KLController, latest_checkpoint, ppo_step, run_ppo  # noqa: E402
from dnfbot.train.rlhf.rollout import policy_forward, reference_logprobs, rollout  # noqa: E402
from dnfbot.train.rlhf.run import load_prompts  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()

# small but real: 16 episodes per rollout, 2 minibatches x 4 epochs, responses of at most 12 tokens
TOY_PPO = dict(
    batch_size=16,
    mini_batch_size=8,
    micro_batch_size=8,
    forward_batch_size=16,
    max_new_tokens=12,
    temperature=1.0,
    eval_prompts=16,
    norm_samples=32,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, polyglot_tokenizer_dir):
    from support.ppo_toy import make_toy_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible sampling; the machine is shared anyway
    try:
        yield make_toy_task(tmp_path_factory.mktemp("toy"), polyglot_tokenizer_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_run(toy, tmp_path_factory):
    """`dnfbot train ppo --json` on the toy task: (summary printed on stdout, run dir)."""
    work = tmp_path_factory.mktemp("ppo_cli")
    cfg = work / "ppo.yaml"
    cfg.write_text(
        "ppo:\n"
        + "".join(
            f"  {k}: {v}\n" for k, v in {**TOY_PPO, "save_every": 4, "report_to": "tensorboard"}.items()
        ),
        encoding="utf-8",
    )
    out = work / "run"
    # lr and kl-coef as flags, the rest from the YAML: flags win over the file
    args = ["train", "ppo", "--model", str(toy.base), "--sft-adapter", str(toy.sft_adapter)]
    args += ["--reward-adapter", str(toy.reward_adapter), "--prompts", str(toy.prompts), "--out", str(out)]
    args += ["--config", str(cfg), "--steps", "12", "--lr", "3e-3", "--kl-coef", "0.05", "--json"]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout  # exactly one JSON object on stdout
    return json.loads(lines[0]), out


def test_toy_reward_model_prefers_the_target_word(toy):
    assert toy.rm_accuracy > 0.8


def test_ppo_raises_held_out_reward_with_bounded_kl(cli_run):
    summary, out = cli_run
    assert summary["output_dir"] == str(out) and summary["steps"] == 12
    # held-out prompts, same sampling seed before and after: the reward model's score rises clearly
    assert summary["reward_after"] > summary["reward_before"] + 1.0, summary
    assert 0.0 <= summary["mean_kl"] < 10.0, summary  # nats per response
    assert summary["reference_frozen"] is True
    assert summary["reference_shares_base"] is True and summary["reward_shares_base"] is True
    before = [json.loads(x) for x in (out / "eval_before.jsonl").read_text().splitlines()]
    assert summary["n_eval_prompts"] == 16 and len(before) == summary["n_eval_responses"] == 16 * 4
    assert sorted({r["sample"] for r in before}) == [0, 1, 2, 3]  # eval_samples responses per prompt
    assert all(abs(r["kl"]) < 1e-4 for r in before)  # before training the policy IS the reference

    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "step" in s]
    assert [s["step"] for s in steps] == list(range(1, 13))
    for key in (
        "reward",
        "kl",
        "policy_loss",
        "value_loss",
        "clipfrac",
        "entropy",
        "response_length",
        "tokens_per_s",
        "kl_coef",
        "approxkl",
        "rollout_tokens_per_s",
        "optimizer_updates",
    ):
        assert all(isinstance(s[key], int | float) and math.isfinite(s[key]) for s in steps), key
    first, last = steps[:4], steps[-4:]
    assert sum(s["reward"] for s in last) / 4 > sum(s["reward"] for s in first) / 4
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "value_head.safetensors").exists()
    assert latest_checkpoint(out).name == "step-000012"
    # report_to tensorboard (from the run config): event files beside metrics.jsonl
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), list(out.iterdir())


def test_report_rlhf_from_the_run(cli_run):
    summary, out = cli_run
    r = runner.invoke(
        app, ["report", "rlhf", "--run", str(out), "--samples", "3", "--json"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert result["report"] == str(out / "report.md")
    assert "| # | Query | Response (before) | Response (after) | Reward (before) | Reward (after) |" in md
    assert len([line for line in md.splitlines() if line.startswith("| 3 |")]) == 1
    assert math.isclose(result["reward_before"], summary["reward_before"], abs_tol=1e-6)
    assert math.isclose(result["reward_after"], summary["reward_after"], abs_tol=1e-6)
    assert sorted(p.rsplit("/", 1)[1] for p in result["plots"]) == [
        "eos_rate.png",
        "kl.png",
        "response_length.png",
        "reward.png",
        "shaped_score.png",
    ]
    for p in result["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_reference_is_frozen_sft_model_on_shared_weights(toy):
    from dnfbot.models import load_model

    models = build_models(str(toy.base), sft_adapter=toy.sft_adapter, reward_adapter=toy.reward_adapter)
    naive = build_models(
        str(toy.base), sft_adapter=toy.sft_adapter, reward_adapter=toy.reward_adapter, share_base=False
    )
    base, _ = load_model(str(toy.base))
    base_bytes = sum(parameter_storage(base).values())
    shared = sum(parameter_storage(models.lm, models.value_head).values())
    three = sum(parameter_storage(naive.lm, naive.value_head, naive.ref_model, naive.reward.model).values())
    assert models.ref_model is None and models.reward.shared
    assert shared < 1.15 * base_bytes  # one base + three small LoRA adapters + score and value heads
    assert three > 2.5 * base_bytes  # the naive set-up really holds three copies

    cfg = PPOOptions(**{**TOY_PPO, "batch_size": 8, "mini_batch_size": 8, "ppo_epochs": 2})
    torch.manual_seed(0)
    ro = rollout(models, [ids for ids in _queries(models, 8)], cfg)
    q_len = ro.query_ids.shape[1]
    ref_before = reference_logprobs(models, ro.ids, ro.mask, q_len, cfg.temperature)
    score_before = models.reward.score(ro.ids, ro.mask)
    # the reference is the SFT model: same log-probs as base + SFT adapter loaded on its own
    sft, _ = load_model(str(toy.base), adapter=toy.sft_adapter)
    sft_logits = sft(input_ids=ro.ids, attention_mask=ro.mask, position_ids=_positions(ro.mask)).logits
    sft_logp = torch.log_softmax(sft_logits[:, q_len - 1 : -1].float(), -1).gather(
        2, ro.response_ids[..., None]
    )[..., 0]
    m = ro.response_mask.bool()
    assert torch.allclose(ref_before[m], sft_logp[m], atol=1e-4)

    opt = torch.optim.AdamW(models.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        ppo_step(models, opt, ro, KLController(0.05), cfg, 0.0, 1.0, torch.Generator().manual_seed(0))
    _, policy_after, _ = policy_forward(models, ro.ids, ro.mask, q_len, cfg.temperature)
    assert (policy_after[m] - ro.logprobs[m]).abs().max() > 1e-3  # the policy moved ...
    assert torch.equal(
        reference_logprobs(models, ro.ids, ro.mask, q_len, cfg.temperature), ref_before
    )  # ... not the ref
    assert torch.equal(models.reward.score(ro.ids, ro.mask), score_before)
    trainable = {n for n, p in models.lm.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # only the policy adapter


def test_value_warmup_fits_the_initial_returns(toy):
    """--value-warmup: a ridge regression of the value head on the initial policy's returns explains part of them,
    and the value loss on that rollout falls below the zero-initialised head's."""
    from dnfbot.train.rlhf.dist import Dist
    from dnfbot.train.rlhf.ppo import compute_gae, shaped_rewards, value_loss, warm_up_value_head

    models = build_models(str(toy.base), sft_adapter=toy.sft_adapter, reward_adapter=toy.reward_adapter)
    cfg = PPOOptions(**{**TOY_PPO, "batch_size": 16, "value_warmup": True})
    ro = rollout(models, _queries(models, 16), cfg, seed=3)
    mask = ro.response_mask.float()
    mean, std = float(ro.scores.mean()), float(ro.scores.std())

    def loss_now() -> float:
        _, _, values = policy_forward(models, ro.ids, ro.mask, ro.query_ids.shape[1], cfg.temperature)
        rewards, _, _ = shaped_rewards(ro, 0.0, mean, std, cfg)
        _, returns = compute_gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)  # Monte-Carlo returns
        return float(value_loss(values, values, returns, mask, 1e9)[0].detach())

    assert torch.count_nonzero(models.value_head.weight) == 0
    cold = loss_now()
    explained = warm_up_value_head(models, ro, mean, std, cfg, Dist())
    assert 0.0 < explained <= 1.0, explained  # ~0.05 here, ~0.2 on the tiny pipeline: a weak but real fit
    assert loss_now() < cold


def test_ppo_step_on_a_4bit_base(toy):
    """QLoRA set-up: the base in 4-bit nf4 (bitsandbytes, here on the CPU), policy/reference/reward as adapters."""
    bnb = pytest.importorskip("bitsandbytes")
    models = build_models(
        str(toy.base), sft_adapter=toy.sft_adapter, reward_adapter=toy.reward_adapter, load_in_4bit=True
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in models.lm.modules())
    cfg = PPOOptions(
        **{**TOY_PPO, "batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 2, "ppo_epochs": 2}
    )
    torch.manual_seed(0)
    ro = rollout(models, _queries(models, 4), cfg)
    q_len = ro.query_ids.shape[1]
    ref_before = reference_logprobs(models, ro.ids, ro.mask, q_len, cfg.temperature)
    opt = torch.optim.AdamW(models.trainable_parameters(), lr=1e-2)
    metrics = ppo_step(models, opt, ro, KLController(0.05), cfg, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert all(math.isfinite(metrics[k]) for k in ("policy_loss", "value_loss", "entropy"))
    m = ro.response_mask.bool()
    _, policy_after, _ = policy_forward(models, ro.ids, ro.mask, q_len, cfg.temperature)
    assert (policy_after[m] - ro.logprobs[m]).abs().max() > 1e-3
    assert torch.equal(reference_logprobs(models, ro.ids, ro.mask, q_len, cfg.temperature), ref_before)


def _queries(models, n):
    from dnfbot.train.rlhf.run import encode_queries
    from support.ppo_toy import toy_prompts

    return [ids for _, ids in encode_queries(toy_prompts(n, seed=5), models.tokenizer, 64)]


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_where_it_stopped(toy, tmp_path):
    out = tmp_path / "run"
    cfg = PPOOptions(
        **{
            **TOY_PPO,
            "batch_size": 8,
            "mini_batch_size": 8,
            "micro_batch_size": 4,
            "steps": 4,
            "save_every": 2,
            "lr": 3e-3,
            "eval_prompts": 4,
            "model": str(toy.base),
        }
    )
    kw = dict(
        prompts=toy.prompts,
        out_dir=out,
        sft_adapter=toy.sft_adapter,
        reward_adapter=toy.reward_adapter,
        show_progress=False,
    )

    def stop_at_3(step, metrics):
        if step == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_ppo(cfg, **kw, on_step=stop_at_3)
    assert latest_checkpoint(out).name == "step-000002" and not (out / "summary.json").exists()
    with pytest.raises(InputError, match="already holds checkpoints"):
        run_ppo(cfg, **kw, resume=False)
    # resuming with another schedule would mix two runs: refused, naming what changed (--force overrides)
    from dataclasses import replace

    with pytest.raises(InputError, match=r"lr 0.003 -> 0.001.*--force"):
        run_ppo(replace(cfg, lr=1e-3), **kw)

    summary = run_ppo(cfg, **kw)
    assert summary["resumed_from"].endswith("step-000002") and summary["steps"] == 4
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("step") for r in records if "event" in r] == [2]  # one resume event, from step 2
    step3 = [r for r in records if r.get("step") == 3 and "event" not in r]
    assert len(step3) == 2  # logged before the interruption, and again after resuming
    # resuming restores policy, value head, optimizer, RNG and reward statistics: step 3 is replayed exactly
    for key in ("reward", "kl", "policy_loss", "value_loss", "response_length"):
        assert math.isclose(step3[0][key], step3[1][key], rel_tol=1e-3, abs_tol=1e-4), key
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 3, 4]


def test_bad_inputs_are_one_line_errors(tmp_path, toy):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"p.jsonl:2: missing field 'prompt'"):
        load_prompts(bad)
    bad.write_text('{"prompt": " a "}\n{"prompt": ""}\n', encoding="utf-8")
    assert load_prompts(bad) == ["a"]  # empty prompts are skipped
    args = [
        "train",
        "ppo",
        "--model",
        str(toy.base),
        "--prompts",
        str(toy.prompts),
        "--out",
        str(tmp_path / "o"),
    ]
    r = runner.invoke(app, args)
    assert isinstance(r.exception, InputError) and "--reward-adapter" in str(r.exception)
    # through the real entry point: exit code 2 and one line on stderr, no traceback
    p = subprocess.run(
        [sys.executable, "-m", "dnfbot", *args, "--reward-adapter", str(toy.reward_adapter), "--algo", "dpo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.strip() == "error: unknown --algo 'dpo' (choose ppo, grpo or rloo)"


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_trl_algorithms_share_data_reward_and_report(toy, tmp_path, algo):
    from dnfbot.train.rlhf.report import build_report
    from dnfbot.train.rlhf.trl import run_trl_rl

    cfg = PPOOptions(
        **{**TOY_PPO, "batch_size": 8, "eval_prompts": 4, "mini_batch_size": 8, "steps": 2, "lr": 1e-3},
        algo=algo,
        group_size=4,
        model=str(toy.base),
    )
    summary = run_trl_rl(
        cfg,
        prompts=toy.prompts,
        out_dir=tmp_path / algo,
        sft_adapter=toy.sft_adapter,
        reward_adapter=toy.reward_adapter,
        show_progress=False,
    )
    assert summary["algo"] == algo and summary["steps"] == 2
    assert summary["reference_frozen"] is True and summary["reference_shares_base"] is True
    assert all(math.isfinite(summary[k]) for k in ("reward_before", "reward_after", "mean_kl"))
    metrics = [json.loads(x) for x in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward" in m] == [1, 2]
    report = build_report(tmp_path / algo, samples=2)
    assert (
        report["algo"] == algo
        and "RLHF report — " + algo.upper() in (tmp_path / algo / "report.md").read_text()
    )
