"""The recipe a tiny model carries (init-tiny writes it, train sft|rm|ppo apply it where the user sets nothing, and
say so), real models keep the defaults, and bad training input is one line on stderr — never a traceback:
bad numbers, missing or pickled adapters (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dnfbot.errors import InputError
from dnfbot.models import RECIPE_FILE, check_adapter, tiny_recipe
from dnfbot.train.options import load_options


def _dnfbot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, "-m", "dnfbot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    errors = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and p.stderr.strip().splitlines()[-1] == errors[0], (
        p.stderr
    )  # progress lines may precede
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A model folder with the recipe init-tiny writes (the weights are not needed to resolve options)."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text("{}", encoding="utf-8")
    (d / RECIPE_FILE).write_text(json.dumps(tiny_recipe("gpt-neox")), encoding="utf-8")
    return d


def test_recipe_fills_only_what_the_user_did_not_set(tiny_dir, tmp_path, capsys):
    sft = load_options("sft", flags={"model": str(tiny_dir), "max_steps": 40})
    want = tiny_recipe("gpt-neox")["stages"]["sft"]
    assert sft.lr == want["lr"] and sft.lora_targets == "all-linear"
    assert sft.lora_modules_to_save == ["lm_head", "embed_in"] and sft.lora_dropout == 0.0
    assert sft.recipe["file"].endswith(RECIPE_FILE) and set(sft.recipe["applied"]) == set(want)
    line = capsys.readouterr().err
    assert "recipe" in line and "lr 0.01" in line and len(line.strip().splitlines()) == 1

    # a flag wins; so does a config key
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_dir}\nlora:\n  r: 4\nsft:\n  lr: 0.002\n", encoding="utf-8")
    own = load_options("sft", cfg, {"lora_targets": ["query_key_value"]})
    assert own.lr == 0.002 and own.lora_r == 4 and own.lora_targets == ["query_key_value"]
    assert "lr" not in own.recipe["applied"] and own.recipe["applied"]["lora_modules_to_save"]

    # every stage has its own part; the real model's defaults are kept where no recipe is
    assert (
        load_options("rm", flags={"model": str(tiny_dir)}).lr == tiny_recipe("gpt-neox")["stages"]["rm"]["lr"]
    )
    assert (
        load_options("ppo", flags={"model": str(tiny_dir)}).lr
        == tiny_recipe("gpt-neox")["stages"]["ppo"]["lr"]
    )
    real = load_options("sft", flags={"model": str(tmp_path)})
    assert (real.lr, real.lora_r, real.lora_alpha, real.lora_targets, real.recipe) == (
        1e-4,
        8,
        32,
        None,
        None,
    )
    assert load_options("ppo", flags={"model": "EleutherAI/polyglot-ko-1.3b"}).lr == 2e-5


def test_a_broken_recipe_names_its_file(tiny_dir):
    (tiny_dir / RECIPE_FILE).write_text('{"stages": {"sft": {"lr": "big"}}}', encoding="utf-8")
    with pytest.raises(InputError, match=f"{RECIPE_FILE}.*stages.sft.lr"):
        load_options("sft", flags={"model": str(tiny_dir)})
    (tiny_dir / RECIPE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable recipe"):
        load_options("sft", flags={"model": str(tiny_dir)})


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max-steps", "0"], "max_steps 0"),
        (["--max-steps", "-5"], "max_steps -5"),
        (["--batch-size", "0"], "batch_size 0"),
        (["--lr", "-1"], "lr -1"),
        (["--lr", "0"], "lr 0"),
        (["--grad-accum", "0"], "grad_accum 0"),
    ],
)
def test_bad_trainer_numbers_are_one_line_errors(tmp_path, flags, needle):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")
    p = _dnfbot("train", "sft", "--model", "m/x", "--data", str(data), "--out", str(tmp_path / "o"), *flags,
                cwd=tmp_path)  # fmt: skip
    _one_line_error(p, needle)


def test_bad_numbers_in_a_run_config_name_the_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: m/x\nsft:\n  lr: big\n", encoding="utf-8")
    p = _dnfbot("train", "sft", "--config", str(cfg), "--data", "x.jsonl", "--out", "o", cwd=tmp_path)
    _one_line_error(p, "run.yaml", "sft.lr", "big")
    cfg.write_text("model: m/x\nppo:\n  lr: -0.5\n", encoding="utf-8")
    p = _dnfbot("train", "ppo", "--config", str(cfg), "--prompts", "p.jsonl", "--out", "o",
                "--reward-adapter", "rm", cwd=tmp_path)  # fmt: skip
    _one_line_error(p, "run.yaml", "lr -0.5")


def _adapter(d: Path, weights: str | None) -> Path:
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    if weights:
        (d / weights).write_bytes(b"\x80\x04pickle")
    return d


def test_adapters_load_from_safetensors_only(tmp_path):
    with pytest.raises(InputError, match="not found"):
        check_adapter(tmp_path / "nope", "--reward-adapter")
    pickled = _adapter(tmp_path / "bin", "adapter_model.bin")
    with pytest.raises(InputError, match="pickle.*safetensors only"):
        check_adapter(pickled)
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        check_adapter(_adapter(tmp_path / "empty", None))
    # every loader goes through the check before any weights are read
    from dnfbot.models import load_model

    with pytest.raises(InputError, match="pickle"):
        load_model(tmp_path / "no-base-needed", adapter=pickled)


def test_ppo_refuses_missing_and_pickled_adapters_in_one_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"질문 {i}"}) + "\n" for i in range(40)), encoding="utf-8"
    )
    rm = _adapter(tmp_path / "rm", "adapter_model.safetensors")
    common = ["train", "ppo", "--model", "m/x", "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    p = _dnfbot(*common, "--reward-adapter", str(tmp_path / "missing-rm"), cwd=tmp_path)
    _one_line_error(p, "missing-rm", "--reward-adapter folder not found")
    p = _dnfbot(*common, "--reward-adapter", str(rm), "--sft-adapter", str(tmp_path / "nosft"), cwd=tmp_path)
    _one_line_error(p, "nosft", "--sft-adapter folder not found")
    pickled = _adapter(tmp_path / "sft-bin", "adapter_model.bin")
    p = _dnfbot(*common, "--reward-adapter", str(rm), "--sft-adapter", str(pickled), cwd=tmp_path)
    _one_line_error(p, "sft-bin", "pickle")
    p = _dnfbot("generate", "--model", "m/x", "--adapter", str(pickled), "질문", cwd=tmp_path)
    _one_line_error(p, "sft-bin", "pickle")


def test_ppo_honours_the_split_and_refuses_too_few_training_prompts(tmp_path):
    from dnfbot.train.rlhf.run import MIN_TRAIN_PROMPTS, split_prompts

    rows = [{"prompt": f"q{i}", "split": "valid" if i % 5 == 0 else "train"} for i in range(20)]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    train, held, note = split_prompts(f, 16, 0)
    assert held == [f"q{i}" for i in range(0, 20, 5)] and len(train) == 16 and "split=valid" in note
    assert set(train).isdisjoint(held)
    train, held, _ = split_prompts(f, 2, 0)  # at most eval_prompts of the valid ones
    assert len(held) == 2 and set(held) <= {f"q{i}" for i in range(0, 20, 5)} and len(train) == 16

    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"prompt": f"q{i}", "split": "valid" if i else "train"}) + "\n"
                           for i in range(6)), encoding="utf-8")  # fmt: skip
    rm = _adapter(tmp_path / "rm", "adapter_model.safetensors")
    p = _dnfbot("train", "ppo", "--model", "m/x", "--prompts", str(few), "--out", str(tmp_path / "o"),
                "--reward-adapter", str(rm), cwd=tmp_path)  # fmt: skip
    _one_line_error(p, "1 training prompt", f"at least {MIN_TRAIN_PROMPTS}")
