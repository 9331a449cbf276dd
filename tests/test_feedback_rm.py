"""Players' corrections train a reward model: 30 answers logged, each 👎 with the right answer written in, exported
with `dnfbot feedback export --as rm`, trained with `dnfbot train rm` on a tiny GPTNeoX; on the held-out question
groups the reward model prefers the corrected answer to the one players rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from dnfbot.feedback.store import AnswerLog  # noqa: E402
from dnfbot.feedback.trace import AnswerEntry, make_feedback  # noqa: E402
from dnfbot.io import read_jsonl  # noqa: E402
from dnfbot.rag import Answer  # noqa: E402

pytestmark = pytest.mark.slow
PAIRS = (
    Path(__file__).parent / "fixtures" / "train_pairs.jsonl"
)  # 30 questions: a full answer and a few words


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from dnfbot.cli import app

    return CliRunner().invoke(app, args)


def test_an_export_of_corrections_trains_a_reward_model_that_prefers_them(polyglot_tokenizer_dir, tmp_path):
    from dnfbot.models import init_tiny, load_model
    from dnfbot.train.reward import score_pairs

    db = str(tmp_path / "fb.sqlite3")
    with AnswerLog(db) as lg:
        for r in read_jsonl(PAIRS):
            a = Answer(r["prompt"], r["rejected"], True, [], 0.7, "extractive", [], "answer", r["prompt"])
            aid = lg.log(AnswerEntry(lg.new_id(), "web", a))
            lg.feedback(make_feedback(aid, "down", channel="web"))
            lg.feedback(make_feedback(aid, correction=r["chosen"], channel="web"))
    data = tmp_path / "rm.jsonl"
    res = _cli(["feedback", "export", "--db", db, "--as", "rm", "--out", str(data), "--valid-fraction", "0.3",
                "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    exp = json.loads(res.stdout)
    assert exp["records"] == 30 and exp["valid"] >= 5, exp

    torch.set_num_threads(2)
    base = init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path / "base")
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        f"model: {base}\nlora:\n  dropout: 0.0\nrm:\n  lr: 0.001\n  logging_steps: 5\n  threads: 2\n"
    )
    res = _cli(["train", "rm", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"),
                "--max-steps", "30", "--batch-size", "4", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["valid_records"] == exp["valid"] and s["valid_accuracy"] >= 0.8, s

    held_out = [p for p in read_jsonl(data) if p["split"] == "valid"]
    model, tok = load_model(base, task="seq-cls", adapter=tmp_path / "run")
    prompts = [p["prompt"] for p in held_out]
    corrected = score_pairs(model, tok, prompts, [p["chosen"] for p in held_out])
    rejected = score_pairs(model, tok, prompts, [p["rejected"] for p in held_out])
    wins = sum(c > r for c, r in zip(corrected, rejected, strict=True))
    assert wins / len(held_out) >= 0.8, list(zip(corrected, rejected, strict=True))
