"""The whole pipeline through the real CLI on a tiny random-init model (scripts/pipeline_tiny.sh): every stage's
output is the next stage's input, so a broken contract between stages fails here — and every stage learns, with
the plain commands and the recipe init-tiny wrote (issue 13): SFT loss -70% and a training answer reproduced, the
reward model ranks long > medium > short on held-out pairs, PPO raises the held-out reward by a standard
deviation with bounded KL, and `report rlhf` shows it."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("trl")
pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_tiny_pipeline_end_to_end(tmp_path, guide_corpus_path, polyglot_tokenizer_dir):
    out = tmp_path / "run"
    env = dict(
        os.environ,
        DNFBOT=str(Path(sys.executable).parent / "dnfbot"),
        DNFBOT_SHARED=str(guide_corpus_path.parents[1]),
        OMP_NUM_THREADS="2",
    )
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "pipeline_tiny.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    check_pipeline(out, p.stdout, p.stderr)


def check_pipeline(out: Path, stdout: str, stderr: str) -> None:
    """The assertions on a finished `scripts/pipeline_tiny.sh OUT` run (its stdout and stderr)."""
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    synth, sft_data, rm_data, ppo_data, base, sft, gen, rm, ppo, report, dpo, index, answer = lines

    assert synth["records"] > 50 and synth["records"] + synth["rejects"] == synth["processed"]
    assert sft_data["records"] == len((out / "sft.jsonl").read_text(encoding="utf-8").splitlines())
    assert rm_data["pairs"] == 3 * rm_data["ranking_records"]  # three pairs per ranked triple
    assert ppo_data["questions"] == "all" and ppo_data["records"] == synth["records"]
    assert base["arch"] == "gpt-neox" and base["vocab"] == 30003
    assert (out / "base" / "dnfbot_recipe.json").exists()

    # every stage said it applied the model's recipe, and recorded it
    assert stderr.count("recipe: ") >= 4, stderr[-2000:]
    for s in (sft, rm, ppo, dpo):
        assert s["recipe"]["applied"]["lr"] > 1e-4 and s["recipe"]["applied"]["lora_targets"] == "all-linear"

    # SFT learnt: loss down by >= 70%, and it reproduces a training answer
    assert sft["last_loss"] <= 0.3 * sft["first_loss"], (sft["first_loss"], sft["last_loss"])
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [r["completion"] for r in rows if r["question"] == gen["question"]]
    # the opening words of its training answer (greedy decoding of a random-init model never starts with
    # "53680 명성" by chance; how far the copy runs before it loops depends on the CPU's float order)
    assert any(gen["answer"].split()[:2] == a.split()[:2] for a in answers), (gen["answer"], answers)

    # the reward model ranks long > medium > short on held-out pairs
    assert rm["valid_accuracy"] >= 0.9 and rm["last_loss"] < rm["first_loss"]

    # PPO on split=train, judged on split=valid (4 samples per held-out prompt): held-out reward up clearly,
    # responses longer (what this RM prefers), KL bounded. Measured 1.7-2.4 starting-reward stds over three runs
    # (docs/ppo.md); the floor here is 0.75 std, so another CPU's float order does not fail the suite. The EOS
    # rate is reported, not asserted: longer answers hit the 48-token budget on some runs.
    cfg = json.loads((out / "ppo" / "config.json").read_text(encoding="utf-8"))
    assert (
        "split=valid" in cfg["held_out"]
        and cfg["n_train_prompts"] + cfg["n_eval_prompts"] <= synth["records"]
    )
    before = [json.loads(x)["reward"] for x in (out / "ppo" / "eval_before.jsonl").read_text().splitlines()]
    assert statistics.pstdev(before) > 0
    gain = (ppo["reward_after"] - ppo["reward_before"]) / statistics.pstdev(before)
    assert gain >= 0.75, (ppo["reward_before"], ppo["reward_after"], statistics.pstdev(before))
    assert ppo["response_length_after"] > ppo["response_length_before"]
    assert 0 <= ppo["eos_rate_after"] <= 1
    assert ppo["mean_kl"] < 25 and ppo["reference_frozen"] and ppo["reference_shares_base"]
    assert ppo["steps"] == 10
    # and the report shows it: before/after table, EOS rate and length, the curves
    md = Path(report["report"]).read_text(encoding="utf-8")
    assert "responses ending with EOS" in md and "mean response length" in md
    assert {Path(x).name for x in report["plots"]} >= {
        "reward.png",
        "kl.png",
        "eos_rate.png",
        "response_length.png",
    }
    assert all(Path(x).exists() for x in report["plots"])

    # DPO on the same pairs, no reward model: the held-out implicit reward margin rises from exactly 0
    assert dpo["stage"] == "dpo" and abs(dpo["valid_margin_before"]) < 1e-6, dpo
    assert dpo["valid_margin_after"] > 0.1 and dpo["valid_accuracy_after"] >= 0.75, dpo

    assert index["chunks"] > 600
    # The tiny model's words are noise, but the gate and the sources come from retrieval.
    assert answer["answered"] is True and answer["answer"].strip()
    assert answer["sources"] and all(s["doc_id"] and s["title"] for s in answer["sources"])
