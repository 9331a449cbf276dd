"""DPO: a LoRA adapter trained on ranked pairs through TRL's DPOTrainer on a tiny random-init GPTNeoX raises the
held-out implicit reward margin; the reference is the base itself (reloading base + adapter reproduces the
end-of-training rewards); report_to reaches the Trainer; bad input is a one-line error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from dnfbot.errors import InputError  # noqa: E402
from dnfbot.io import read_jsonl, write_jsonl  # noqa: E402
from dnfbot.models import init_tiny, load_model  # noqa: E402
from dnfbot.train.dpo import DPOOptions, implicit_rewards, run_dpo  # noqa: E402

pytestmark = pytest.mark.slow

# 30 ranked pairs (chosen = a full two-sentence answer, rejected = a few words); 10 marked "split": "valid"
PAIRS = Path(__file__).parent / "fixtures" / "train_pairs.jsonl"
THREADS = 2
HAS_TENSORBOARD = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
# the tiny model's own recipe (dnfbot_recipe.json, written by init_tiny) sets LoRA, the fully trained modules and
# the learning rate: the run config only logs more often
CONFIG = f"""\
dpo:
  logging_steps: 2
  threads: {THREADS}
"""


def _cli(args: list[str]):
    from typer.testing import CliRunner

    import dnfbot.cli as cli

    return CliRunner().invoke(cli.app, args)


@pytest.fixture(scope="module")
def base(polyglot_tokenizer_dir, tmp_path_factory) -> Path:
    torch.set_num_threads(THREADS)
    return init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path_factory.mktemp("dpo") / "base")


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> tuple[Path, dict]:
    """Train through the CLI (YAML run config + flags, --json), logging to TensorBoard when it is installed."""
    tmp = tmp_path_factory.mktemp("dpo")
    cfg = tmp / "dpo.yaml"
    cfg.write_text(f"model: {base}\n{CONFIG}", encoding="utf-8")
    args = ["train", "dpo", "--config", str(cfg), "--data", str(PAIRS), "--out", str(tmp / "run")]
    args += ["--max-steps", "8", "--batch-size", "4", "--json"]
    if HAS_TENSORBOARD:
        args += ["--report-to", "tensorboard"]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    return tmp / "run", json.loads(res.stdout.strip().splitlines()[-1])


def test_dpo_raises_the_held_out_implicit_reward_margin(trained):
    out, s = trained
    assert s["stage"] == "dpo" and s["steps"] == 8 and (s["train_records"], s["valid_records"]) == (20, 10)
    # the fresh adapter *is* the reference: every implicit reward starts at exactly 0
    assert s["valid_margin_before"] == pytest.approx(0.0, abs=1e-6)
    assert s["valid_margin_after"] > 0.5, s
    assert s["valid_accuracy_after"] >= 0.9, s
    assert s["last_loss"] < s["first_loss"] - 0.1, (s["first_loss"], s["last_loss"])
    assert s["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0): policy = reference at step 1
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "summary.json",
                 "metrics.jsonl", "valid_scores.jsonl"):  # fmt: skip
        assert (out / name).exists(), name
    assert not list(out.glob("*.bin"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and "lm_head" in cfg["modules_to_save"]  # from the recipe
    assert s["recipe"] and s["recipe"]["applied"]["lr"] == pytest.approx(3e-3)
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:  # one adapter: no reference copy saved
        keys = list(f.keys())
    assert keys and not [k for k in keys if ".ref." in k]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["config"]["dpo"]["beta"] == 0.1 and "lm_head" in summary["config"]["lora"]["modules_to_save"]
    )
    metrics = read_jsonl(out / "metrics.jsonl")
    assert any("reward_margin" in r for r in metrics) and any("eval_margin" in r for r in metrics)


def test_reloaded_adapter_reproduces_the_end_of_training_rewards(base, trained):
    """base + saved adapter, with the adapter disabled as the reference, gives the rewards the run recorded."""
    out, s = trained
    saved = read_jsonl(out / "valid_scores.jsonl")
    model, tok = load_model(base, adapter=out)
    again = implicit_rewards(model, tok, saved, beta=0.1, batch_size=3)
    assert again["chosen_reward"] == pytest.approx([r["chosen_reward"] for r in saved], abs=1e-3)
    assert again["rejected_reward"] == pytest.approx([r["rejected_reward"] for r in saved], abs=1e-3)
    assert again["margin"] == pytest.approx(s["valid_margin_after"], abs=1e-3)


def test_report_rlhf_shows_the_dpo_run(trained):
    out, s = trained
    res = _cli(["report", "rlhf", "--run", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert (
        r["algo"] == "dpo"
        and r["n_prompts"] == 10
        and r["margin_after"] == pytest.approx(s["valid_margin_after"], abs=1e-5)
    )
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "# RLHF report — DPO" in text and f"{s['valid_margin_after']:+.3f}" in text
    assert (out / "metrics.png").exists()


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="neither tensorboard nor tensorboardX is installed")
def test_report_to_tensorboard_writes_event_files(trained):
    out, s = trained
    assert list(out.glob("runs/*/events.out.tfevents.*")), sorted(p.name for p in out.rglob("*"))
    assert s["steps"] == 8


def test_extra_cannot_fight_a_declared_option(base, tmp_path):
    opts = DPOOptions(max_steps=1, threads=THREADS, extra={"report_to": "tensorboard"})
    with pytest.raises(InputError, match=r"extra: report_to is set by dnfbot's own options"):
        run_dpo(str(base), PAIRS, tmp_path / "o", options=opts, echo=False)


def test_bad_pairs_are_clear_errors(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing or empty field 'rejected'"):
        run_dpo(str(base), bad, tmp_path / "o1", options=DPOOptions(max_steps=1), echo=False)
    res = _cli(["train", "dpo", "--data", str(PAIRS), "--out", str(tmp_path / "o2"), "--beta", "x"])
    assert res.exit_code != 0


def test_qlora_dpo_on_a_4bit_llama(polyglot_tokenizer_dir, tmp_path):
    """QLoRA-DPO: a 4-bit nf4 base (bitsandbytes' CPU kernels), the Llama/EEVE layout; the reference is still the
    4-bit base with the adapter disabled, and the held-out margin moves above 0."""
    pytest.importorskip("bitsandbytes")
    llama = init_tiny("llama", polyglot_tokenizer_dir, tmp_path / "llama")
    opts = DPOOptions(
        max_steps=6, batch_size=4, load_in_4bit=True, lr=2e-3, lora_dropout=0.0, lora_modules_to_save=["lm_head"],
        threads=THREADS, logging_steps=2,
    )  # fmt: skip
    s = run_dpo(str(llama), PAIRS, tmp_path / "run", options=opts, echo=False)
    assert s["load_in_4bit"] and s["steps"] == 6
    assert s["valid_margin_before"] == pytest.approx(0.0, abs=1e-6) and s["valid_margin_after"] > 0.1, s
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_resume_after_its_checkpoint_was_rotated_out(base, tmp_path):
    """Re-running continues from the last checkpoint; the summary still says where, although save_total_limit
    deleted that checkpoint during the continued run."""
    out = tmp_path / "run"
    opts = dict(
        lr=2e-3, save_steps=1, save_total_limit=2, threads=THREADS, valid_fraction=0.0, logging_steps=1
    )
    first = run_dpo(str(base), PAIRS, out, options=DPOOptions(max_steps=2, **opts), echo=False)
    assert first["steps"] == 2 and first["resumed_from_step"] is None
    again = run_dpo(str(base), PAIRS, out, options=DPOOptions(max_steps=4, **opts), resume=True, echo=False)
    assert again["steps"] == 4 and again["resumed_from_step"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
