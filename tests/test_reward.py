"""Reward model: a 1-label classifier + LoRA really learns a ranking (long, helpful answers over short ones) on a
tiny GPTNeoX, the reloaded adapter reproduces the end-of-training scores, `reward score` and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from dnfbot.errors import InputError  # noqa: E402
from dnfbot.io import read_jsonl, write_jsonl  # noqa: E402
from dnfbot.models import init_tiny, load_model  # noqa: E402
from dnfbot.train.common import load_records  # noqa: E402
from dnfbot.train.reward import PAIR_FIELDS, RMOptions, pair_texts, pairwise_accuracy, run_reward, score_pairs  # noqa: E402

pytestmark = pytest.mark.slow

# 30 ranked pairs (chosen = a full two-sentence answer, rejected = a few words); 10 marked "split": "valid"
PAIRS = Path(__file__).parent / "fixtures" / "train_pairs.jsonl"
THREADS = 2


def _cli(args: list[str]):
    from typer.testing import CliRunner

    import dnfbot.cli as cli

    return CliRunner().invoke(cli.app, args)


@pytest.fixture(scope="module")
def base(polyglot_tokenizer_dir, tmp_path_factory) -> Path:
    torch.set_num_threads(THREADS)
    return init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path_factory.mktemp("rm") / "base")


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Train through the CLI (YAML config + flags, --json); also returns the untrained model's validation ranking."""
    valid = [r for r in load_records(PAIRS, PAIR_FIELDS) if r["split"] == "valid"]
    torch.manual_seed(0)
    untrained, tok = load_model(base, task="seq-cls")  # random score head, as training starts
    before = pairwise_accuracy(untrained, tok, valid)

    tmp = tmp_path_factory.mktemp("rm")
    cfg = tmp / "rm.yaml"
    cfg.write_text(
        f"model: {base}\nlora:\n  dropout: 0.0\nrm:\n  lr: 0.001\n  logging_steps: 5\n  threads: {THREADS}\n"
    )
    res = _cli(
        [
            "train",
            "rm",
            "--config",
            str(cfg),
            "--data",
            str(PAIRS),
            "--out",
            str(tmp / "run"),
            "--max-steps",
            "30",
            "--batch-size",
            "4",
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    return tmp / "run", json.loads(res.stdout.strip().splitlines()[-1]), before


def test_reward_model_learns_the_ranking(trained):
    out, s, before = trained
    assert s["stage"] == "rm" and s["steps"] == 30 and (s["train_records"], s["valid_records"]) == (20, 10)
    assert s["last_loss"] < s["first_loss"] - 0.15, (s["first_loss"], s["last_loss"])
    assert s["valid_accuracy"] >= 0.8, s
    assert s["valid_margin"] > before["margin"] + 0.3, (before["margin"], s["valid_margin"])
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "README.md",
        "summary.json",
        "metrics.jsonl",
        "valid_scores.jsonl",
    ):
        assert (out / name).exists(), name
    assert not list(out.glob("*.bin"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"]
    # the tiny model's recipe (dnfbot_recipe.json) set the LoRA shape; the config file set lr and dropout
    applied = s["recipe"]["applied"]
    assert "lr" not in applied and "lora_dropout" not in applied and "lora_r" in applied, applied
    assert cfg["r"] == applied["lora_r"] and cfg["lora_dropout"] == 0.0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert any("eval_accuracy" in r for r in metrics) and any("accuracy" in r for r in metrics)


def test_reloaded_adapter_reproduces_the_end_of_training_scores(base, trained):
    out, _, _ = trained
    saved = read_jsonl(out / "valid_scores.jsonl")
    model, tok = load_model(base, task="seq-cls", adapter=out)
    prompts = [r["prompt"] for r in saved]
    chosen = score_pairs(model, tok, prompts, [r["chosen"] for r in saved], batch_size=3)
    rejected = score_pairs(model, tok, prompts, [r["rejected"] for r in saved], batch_size=3)
    assert chosen == pytest.approx([r["chosen_score"] for r in saved], abs=1e-4)
    assert rejected == pytest.approx([r["rejected_score"] for r in saved], abs=1e-4)
    # the score is read at the last real token: padding a batch does not change a text's reward
    alone = score_pairs(model, tok, prompts[:1], [saved[0]["rejected"]], batch_size=1)
    assert alone[0] == pytest.approx(rejected[0], abs=1e-4)
    assert (
        pair_texts("피로도는?", "매일 회복됩니다.")
        == "### 질문: 피로도는?\n\n### 답변: 매일 회복됩니다.<|endoftext|>"
    )


def test_cli_reward_score_pairs_and_responses(base, trained, tmp_path):
    out, s, _ = trained
    valid = tmp_path / "valid.jsonl"
    write_jsonl(valid, [r for r in read_jsonl(PAIRS) if r["split"] == "valid"])
    res = _cli(
        ["reward", "score", "--model", str(base), "--adapter", str(out), "--data", str(valid), "--json"]
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["records"] == 10 and r["accuracy"] == pytest.approx(s["valid_accuracy"])

    responses = tmp_path / "responses.jsonl"
    rec = read_jsonl(valid)[0]
    write_jsonl(
        responses,
        [
            {"prompt": rec["prompt"], "response": rec["chosen"]},
            {"prompt": rec["prompt"], "response": rec["rejected"]},
        ],
    )
    res = _cli(
        [
            "reward",
            "score",
            "--model",
            str(base),
            "--adapter",
            str(out),
            "--data",
            str(responses),
            "--out",
            str(tmp_path / "scored.jsonl"),
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    scores = [x["score"] for x in read_jsonl(tmp_path / "scored.jsonl")]
    saved = read_jsonl(out / "valid_scores.jsonl")[0]
    assert scores == pytest.approx([saved["chosen_score"], saved["rejected_score"]], abs=1e-4)

    res = _cli(["plot", "metrics", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert "eval_accuracy" in json.loads(res.stdout.strip().splitlines()[-1])["series"]


def test_bad_pairs_are_clear_errors(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing or empty field 'rejected'"):
        run_reward(str(base), bad, tmp_path / "o1", options=RMOptions(max_steps=1), echo=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty dataset"):
        run_reward(str(base), empty, tmp_path / "o2", options=RMOptions(max_steps=1), echo=False)
    res = _cli(
        [
            "train",
            "rm",
            "--model",
            str(tmp_path / "missing"),
            "--data",
            str(PAIRS),
            "--out",
            str(tmp_path / "o3"),
        ]
    )
    assert res.exit_code != 0 and "does not exist" in str(res.exception)
    res = _cli(["reward", "score", "--model", str(base), "--data", str(empty)])
    assert res.exit_code != 0 and "empty dataset" in str(res.exception)
