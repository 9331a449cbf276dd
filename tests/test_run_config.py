"""One run-config schema for every training stage (train/options.py), and flags generated from the option fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnfbot.cli import app
from dnfbot.errors import InputError
from dnfbot.options import declared, flag_decls
from dnfbot.train.options import (
    STAGES,
    DPOOptions,
    PPOOptions,
    RMOptions,
    SFTOptions,
    load_options,
    run_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "bge-m3"], ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_model_config_drives_every_stage(path, stage):
    opts = load_options(stage, path)
    assert opts.model and opts.load_in_4bit  # the top-level keys reach every stage


def test_stage_section_then_flags_win(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(
        "model: m\nlora: {r: 4, targets: [q_proj]}\nsft: {lr: 3.0e-4, lora_r: 16}\nrm: {lr: 5.0e-5}\n"
        "ppo: {steps: 7}\n",
        encoding="utf-8",
    )
    sft = load_options("sft", f, {"lr": 1e-3})
    rm = load_options("rm", f)
    ppo = load_options("ppo", f)
    assert (sft.model, sft.lora_r, sft.lora_targets, sft.lr) == ("m", 16, ["q_proj"], 1e-3)
    assert (rm.lora_r, rm.lr, rm.batch_size) == (4, 5e-5, 4)  # RM's own default batch size
    assert (ppo.steps, ppo.lora_r, ppo.lr) == (7, 4, 2e-5)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("modle: m\n", "unknown key 'modle'"),
        ("lora: {rank: 4}\n", "unknown key 'lora.rank'"),
        ("sft: {learning_rate: 1}\n", "unknown key 'sft.learning_rate'"),
        ("ppo: {klcoef: 1}\n", "unknown key 'ppo.klcoef'"),
        ("rm: {packing: true}\n", "unknown key 'rm.packing'"),  # an SFT option is not an RM one
        ("sft: {lr: big}\n", "'sft.lr': expected a number"),
        ("sft: [1, 2]\n", "'sft' must be a mapping"),
    ],
)
def test_bad_keys_name_the_key_and_the_file(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text, encoding="utf-8")
    for stage in STAGES:  # every key is checked, whichever stage reads the file
        with pytest.raises(InputError, match=str(f)) as e:
            load_options(stage, f)
        assert needle in str(e.value)


def test_summary_json_reproduces_the_run(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(
        "model: m\nload_in_4bit: true\nlora: {r: 4}\nsft: {lr: 3.0e-4, packing: true}\n", encoding="utf-8"
    )
    opts = load_options("sft", f, {"max_steps": 5})
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"output_dir": "run", "config": run_config("sft", opts)}), encoding="utf-8")
    assert load_options("sft", summary) == opts


@pytest.mark.parametrize(
    ("verb", "cls"), [("sft", SFTOptions), ("rm", RMOptions), ("ppo", PPOOptions), ("dpo", DPOOptions)]
)
def test_flags_are_generated_from_the_option_fields(verb, cls):
    import typer

    cmd = typer.main.get_command(app).get_command(None, "train").get_command(None, verb)
    flags = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for d in declared(cls):
        if d.cli:
            assert set(flag_decls(d)[0].split("/")) <= flags, d.name
    assert "--trust-remote-code" not in flags  # config-file only
    helps = {p.name: p.help for p in cmd.params}
    assert helps["lr"].startswith("learning rate")  # the field's doc is the flag's help


def test_rm_shares_sft_options():
    sft, rm = {d.name for d in declared(SFTOptions)}, {d.name for d in declared(RMOptions)}
    assert sft - rm == {"packing"} and rm - sft == {"center_rewards_coefficient"}


def test_report_to_is_a_declared_option(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(
        "model: m\nsft: {report_to: tensorboard}\ndpo: {report_to: [tensorboard, wandb], beta: 0.2}\n"
    )
    assert load_options("sft", f).report_to == "tensorboard"
    assert load_options("rm", f).report_to == "none"  # the default: metrics.jsonl only
    dpo = load_options("dpo", f)
    assert (dpo.report_to, dpo.beta) == (["tensorboard", "wandb"], 0.2)
