"""PPO over two processes for real: `accelerate launch --multi_gpu --num_processes 2 -m dnfbot train ppo …` on the
CPU (gloo). Each process rolls out half of every batch, the gradients are summed, the batch statistics are
gathered (rlhf/dist.py) — so the 2-process run follows the 1-process run of the same global batch, rank 0 alone
writes the run's files, and an interrupted 2-process run resumes from its checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from dnfbot.io import read_jsonl  # noqa: E402
from support.launch import run_dnfbot  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 4
# micro-batches of one episode: a minibatch's gradient is then the same sum whichever process holds which
# episode, so the two runs may differ only by floating-point reduction order
CONFIG = """\
ppo:
  batch_size: 8
  mini_batch_size: 4
  micro_batch_size: 1
  forward_batch_size: 4
  max_new_tokens: 12
  temperature: 1.0
  eval_prompts: 8
  norm_samples: 16
  lr: 3.0e-3
  kl_coef: 0.05
  save_every: 2
  threads: 1
"""


def _ppo(toy, out: Path, cfg: Path, *, processes: int) -> subprocess.CompletedProcess:
    args = ["train", "ppo", "--config", str(cfg), "--model", str(toy.base)]
    args += ["--sft-adapter", str(toy.sft_adapter), "--reward-adapter", str(toy.reward_adapter)]
    args += ["--prompts", str(toy.prompts), "--out", str(out), "--steps", str(STEPS), "--json"]
    return run_dnfbot(args, processes=processes)


def _curve(out: Path, key: str) -> list[float]:
    return [r[key] for r in read_jsonl(out / "metrics.jsonl") if "step" in r and key in r]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, polyglot_tokenizer_dir):
    from support.ppo_toy import make_toy_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield make_toy_task(tmp_path_factory.mktemp("toy2"), polyglot_tokenizer_dir)
    finally:
        torch.set_num_threads(threads)


def test_two_processes_follow_the_one_process_run_and_resume(toy, tmp_path):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    one = _ppo(toy, tmp_path / "one", cfg, processes=1)
    two = _ppo(toy, tmp_path / "two", cfg, processes=2)

    assert len(two.stdout.strip().splitlines()) == 1  # one summary for the run, not one per rank
    s1, s2 = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, two))
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
    # the same global batch, sampled with the same seeds: the curves match (rank 1 wrote no second set)
    for key in ("reward", "kl", "response_length", "value_loss"):
        c1, c2 = _curve(tmp_path / "one", key), _curve(tmp_path / "two", key)
        assert len(c1) == len(c2) == STEPS, key
        assert c2 == pytest.approx(c1, rel=0.05, abs=0.05), (key, c1, c2)
    # the held-out evaluation is gathered from both ranks, in order
    before = [r["prompt"] for r in read_jsonl(tmp_path / "one" / "eval_before.jsonl")]
    assert [r["prompt"] for r in read_jsonl(tmp_path / "two" / "eval_before.jsonl")] == before
    assert s2["reward_after"] == pytest.approx(s1["reward_after"], abs=0.1)
    assert s2["reward_after"] > s2["reward_before"]  # and it learns

    # interrupted after the step-2 checkpoint: the same command resumes there and ends where the whole run did
    run = tmp_path / "two"
    full = _curve(run, "reward")
    shutil.rmtree(run / "checkpoints" / "step-000004")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in read_jsonl(run / "metrics.jsonl") if r.get("step", 0) <= 2)
    )
    again = json.loads(_ppo(toy, run, cfg, processes=2).stdout.strip().splitlines()[-1])
    assert again["resumed_from"].endswith("step-000002")
    assert _curve(run, "reward") == pytest.approx(full, abs=1e-4)
