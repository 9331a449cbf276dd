"""Every training stage's options, each declared once, and the one run-config schema that drives them all.

A run config (configs/*.yaml, or a finished run's summary.json) is

    model: EleutherAI/polyglot-ko-1.3b   # top level: the model keys every stage shares (ModelOptions)
    load_in_4bit: true
    lora: {r: 8, alpha: 32, dropout: 0.05, targets: [query_key_value]}   # LoraOptions (lora_r, lora_alpha, …)
    sft:      {lr: 1.0e-4, packing: true, …}     # SFTOptions
    rm:       {lr: 5.0e-5, …}                    # RMOptions
    ppo:      {steps: 200, kl_coef: 0.05, …}     # PPOOptions
    dpo:      {beta: 0.1, lr: 5.0e-5, …}         # DPOOptions
    generate: {num_beams: 3, …}                  # GenerateOptions

and `dnfbot train sft|rm|dpo|ppo` and `dnfbot generate` all read it: a stage takes the top-level keys it has, then its
own section (which may also set shared keys), then the command-line flags — each later one wins. Every key of the
file is checked, whichever stage runs: an unknown key or a wrong type is an error naming the key and the file.
A run writes its resolved options into summary.json ("config", this schema), so `--config RUN/summary.json`
repeats it. Options are dataclasses whose fields carry their help (dnfbot.options): the flags are generated from
them, so a new option is one line, and a new stage is one dataclass plus one line in STAGES.
Nothing here imports torch: validating a config, and every `--help`, stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dnfbot.errors import InputError
from dnfbot.generate.hf import DecodeOptions
from dnfbot.options import as_dict, build, coerce, comma_list, declared, names, option

# --- what every stage shares ---------------------------------------------------------------------------------


@dataclass
class ModelOptions:
    """Top-level keys of a run config."""

    panel = "Model"
    model: str | None = option(None, "base model: local path or hub id (or 'model:' in --config)")
    load_in_4bit: bool = option(False, "load the base in 4-bit nf4 (QLoRA)", flag="--4bit/--no-4bit")
    trust_remote_code: bool = option(False, "run code shipped with the model (config file only)", cli=False)
    dtype: str | None = option(
        None, "float32 | bfloat16 | float16 (default: float32 on CPU, bf16 on a bf16 GPU and with 4-bit)"
    )


@dataclass
class LoraOptions:
    """The `lora:` section of a run config (keys without the lora_ prefix)."""

    panel = "LoRA"
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA path")
    lora_targets: list[str] | str | None = option(
        None, "modules LoRA adapts: comma list or all-linear (default: by architecture)", parse=comma_list
    )
    lora_modules_to_save: list[str] | None = option(
        None, "modules trained in full and saved with the adapter, e.g. lm_head", parse=comma_list
    )


@dataclass
class TrainerOptions(LoraOptions, ModelOptions):
    """What the transformers-Trainer stages (SFT, reward model) share."""

    panel = "Training"
    lr: float = option(1e-4, "learning rate")
    epochs: float = option(1.0, "passes over the training data")
    max_steps: int = option(-1, "stop after N optimizer steps (> 0 overrides epochs)")
    batch_size: int = option(2, "examples per step (per device)")
    grad_accum: int = option(1, "batches accumulated per optimizer step")
    max_length: int = option(1024, "tokens per example")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up")
    lr_scheduler: str = option("linear", "transformers scheduler: linear | cosine | constant | …")
    weight_decay: float = option(0.0, "AdamW weight decay")
    optim: str = option(
        "adamw_torch", "optimizer (GPU configs use paged_adamw_8bit: 8-bit state, see configs/)"
    )
    logging_steps: int = option(10, "log every N steps")
    save_steps: int = option(200, "checkpoint every N steps")
    save_total_limit: int = option(2, "checkpoints kept")
    eval_steps: int | None = option(None, "evaluate every N steps (default: once at the end)")
    valid_fraction: float = option(0.05, "share held out when the data file has no split field")
    limit: int | None = option(None, "use only the first N records")
    seed: int = option(42, "random seed")
    threads: int | None = option(None, "CPU threads for torch")
    extra: dict[str, Any] = option(
        help="passed through to TRL's trainer config (keys dnfbot has no option for)", cli=False, factory=dict
    )
    report_to: list[str] | str = option(
        "none",
        "where the Trainer also logs: none | tensorboard | wandb | all, or a comma list",
        parse=comma_list,
    )

    def validate(self) -> None:
        # transformers takes max_steps 0 as 1 step and any negative as "use epochs": refused, -1 is the default
        if self.max_steps != -1 and self.max_steps < 1:
            raise InputError(f"max_steps {self.max_steps}: must be >= 1 (or -1: train for `epochs`)")
        _check_positive(self, "lr", "epochs")
        _check_at_least(self, 1, "batch_size", "grad_accum", "max_length", "logging_steps", "save_steps")
        _check_at_least(self, 0, "warmup_steps", "weight_decay")
        if not 0 <= self.valid_fraction < 1:
            raise InputError(f"valid_fraction {self.valid_fraction}: must be in [0, 1)")
        _check_lora(self)


@dataclass
class SFTOptions(TrainerOptions):
    """`sft:` — supervised fine-tuning (train/sft.py)."""

    packing: bool = option(False, "pack examples into full rows (padding-free, attention kept per example)")


@dataclass
class RMOptions(TrainerOptions):
    """`rm:` — the reward model (train/reward.py)."""

    batch_size: int = option(4, "pairs per step (2x sequences)")
    # TRL's RewardTrainer filters long pairs, it does not truncate them
    max_length: int = option(512, "tokens per text; longer pairs are dropped")
    valid_fraction: float = option(0.1, "share held out when the data file has no split field")
    center_rewards_coefficient: float | None = option(
        None, "e.g. 0.01 keeps rewards centred on 0 (what PPO's reward scaling likes)"
    )


@dataclass
class PPOOptions(LoraOptions, ModelOptions):
    """`ppo:` — every hyper-parameter of RLHF (train/rlhf/ppo.py; GRPO/RLOO through TRL use the shared ones).

    LoRA keys shape the fresh policy adapter when no SFT adapter is given."""

    panel = "PPO"
    algo: str = option("ppo", "ppo | grpo | rloo (grpo/rloo through TRL)")
    reward_model: str | None = option(
        None, "a different reward-model base (loaded separately; default: the policy's base)"
    )
    # rollout
    steps: int = option(
        200, "PPO iterations: one rollout batch + ppo_epochs of updates each", flag=("--steps", "--max-steps")
    )
    batch_size: int = option(16, "prompts (= episodes) per rollout")
    # 2 minibatches x 4 epochs = 8 updates per batch (was 16: the first batch alone moved the tiny policy ~7 nats)
    mini_batch_size: int = option(8, "episodes per optimizer step")
    micro_batch_size: int = option(4, "episodes per forward/backward (accumulated within a minibatch)")
    forward_batch_size: int = option(8, "episodes per no-grad forward pass / generate() call in the rollout")
    ppo_epochs: int = option(4, "passes over each rollout batch")
    max_prompt_tokens: int = option(256, "longer prompts are skipped")
    max_new_tokens: int = option(128, "response budget")
    temperature: float = option(0.7, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling")
    group_size: int = option(4, "grpo/rloo: responses per prompt")
    # reward shaping
    kl_coef: float = option(0.05, "beta of the per-token KL penalty (initial value when adaptive)")
    adaptive_kl: bool = option(False, "adaptive KL controller", flag="--adaptive-kl/--fixed-kl")
    target_kl: float = option(6.0, "nats per response, for the adaptive controller")
    kl_horizon: int = option(10000, "episodes, for the adaptive controller")
    # in units of the initial policy's reward std (normalize_reward): at 1.0 "emit EOS" outweighed the reward
    # model's own spread and PPO optimised stopping, not the RM (issue 13); at 0.5 the RM signal dominates
    no_eos_penalty: float = option(
        0.5,
        "subtracted from the normalised score of responses without EOS, in initial-reward stds (0 disables)",
    )
    normalize_reward: bool = option(True, "(score - mean) / std with the initial policy's statistics")
    norm_samples: int = option(64, "prompts for those statistics")
    whiten_rewards: bool = option(False, "whiten the per-token rewards (mean kept)")
    # PPO
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    cliprange: float = option(0.2, "policy ratio clip")
    cliprange_value: float = option(0.2, "value clip")
    vf_coef: float = option(0.1, "value-loss weight")
    lr: float = option(2e-5, "learning rate")
    adam_eps: float = option(1e-5, "Adam epsilon")
    lr_decay: bool = option(True, "linear learning-rate decay to 0 over the steps")
    max_grad_norm: float = option(1.0, "global gradient-norm clip")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    # measured on the tiny pipeline and the toy task: no gain over a zero-initialised head (docs/ppo.md), so opt-in
    value_warmup: bool = option(
        False,
        "fit the value head to the initial policy's returns (ridge regression) before the first update",
        flag="--value-warmup/--no-value-warmup",
    )
    target_approx_kl: float = option(
        0.02,
        "stop a batch's epochs once an epoch's mean approx KL exceeds this (0: never; CleanRL's target_kl)",
    )
    # evaluation, logging, checkpoints
    eval_prompts: int = option(16, "held-out prompts scored before and after training")
    # one sample per prompt made a 13-prompt held-out mean swing by ~0.5 reward std between seeds of the same run
    eval_samples: int = option(4, "responses sampled per held-out prompt (the held-out reward is their mean)")
    save_every: int = option(20, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = option(2, "checkpoints kept")
    limit: int | None = option(None, "use only the first N prompts")
    seed: int = option(0, "random seed")
    threads: int | None = option(None, "CPU threads for torch")
    report_to: list[str] | str = option(
        "none", "where the run also logs: none | tensorboard | wandb | all, or a comma list", parse=comma_list
    )

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise InputError(f"unknown --algo '{self.algo}' (choose {', '.join(ALGOS[:-1])} or {ALGOS[-1]})")
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.micro_batch_size:
            raise InputError(
                f"ppo config: batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                f"({self.mini_batch_size}), which must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        for name in (
            "steps",
            "batch_size",
            "ppo_epochs",
            "max_new_tokens",
            "forward_batch_size",
            "save_every",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"ppo config: {name} must be >= 1")
        if not self.temperature > 0:
            raise InputError("ppo config: temperature must be > 0")
        _check_positive(self, "lr", "adam_eps", "max_grad_norm")
        _check_at_least(
            self,
            0,
            "kl_coef",
            "no_eos_penalty",
            "vf_coef",
            "cliprange",
            "cliprange_value",
            "target_approx_kl",
        )
        _check_at_least(
            self, 1, "mini_batch_size", "micro_batch_size", "eval_prompts", "eval_samples", "group_size"
        )
        report_to_names(self.report_to)
        _check_lora(self)


ALGOS = ("ppo", "grpo", "rloo")
REPORT_TO = ("none", "tensorboard", "wandb", "all")


def report_to_names(report_to: list[str] | str | None) -> list[str]:
    """The trackers a `report_to` value names ("all" = every one, "none" = none); an unknown one is an error."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise InputError(f"report_to: unknown '{unknown[0]}' (choose from {', '.join(REPORT_TO)})")
    return ["tensorboard", "wandb"] if "all" in names else [n for n in names if n != "none"]


@dataclass
class DPOOptions(TrainerOptions):
    """`dpo:` — direct preference optimisation on ranked pairs (train/dpo.py, TRL's DPOTrainer)."""

    # LoRA moves far fewer weights than the full fine-tuning TRL's 1e-6 default is meant for
    lr: float = option(5e-5, "learning rate")
    batch_size: int = option(4, "pairs per step (2x sequences)")
    max_length: int = option(512, "tokens per prompt + response (longer ones are cut at the end)")
    valid_fraction: float = option(0.1, "share held out when the data file has no split field")
    beta: float = option(0.1, "DPO beta: strength of the pull towards the reference (higher = closer)")
    loss_type: str = option("sigmoid", "TRL loss: sigmoid (DPO) | ipo | hinge | robust | …")
    label_smoothing: float = option(0.0, "share of pairs assumed mislabelled (robust / cDPO)")


@dataclass
class GenerateOptions(ModelOptions, DecodeOptions):
    """`generate:` — decoding for `dnfbot generate` (beam search by default: deterministic, fluent answers)."""


STAGES: dict[str, type] = {
    "sft": SFTOptions,
    "rm": RMOptions,
    "ppo": PPOOptions,
    "generate": GenerateOptions,
    "dpo": DPOOptions,
}
LORA = "lora"


# --- reading and writing run configs -------------------------------------------------------------------------


def load_options(
    stage: str, config: str | os.PathLike | None = None, flags: dict | None = None, *, echo: bool = True
) -> Any:
    """The options of `stage`: defaults, then the model's recipe (see `read_recipe`), then the run config's top
    level and `stage:` section, then `flags` (values that are None count as not given). What the recipe set is
    kept on the result as `.recipe` (for the run summary) and, with `echo`, said in one line on stderr."""
    values: dict[str, Any] = {}
    where = "options"
    if config is not None:
        where = str(config)
        values = stage_values(read_run_config(config), stage, where)
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    opts = _build(stage, values, where)
    recipe = read_recipe(opts.model) if opts.model else None
    own = (recipe or {}).get("stages", {}).get(stage) or {}
    applied = {k: v for k, v in own.items() if k not in values}
    if applied:
        opts = _build(stage, {**applied, **values}, f"{recipe['file']} (stage '{stage}')")
    opts.recipe = (
        {"file": recipe["file"], "kind": recipe.get("kind"), "applied": applied} if applied else None
    )
    if applied and echo:
        from dnfbot.console import console

        shown = ", ".join(f"{k} {_show(v)}" for k, v in applied.items())
        console.print(
            f"[cyan]recipe[/]: {recipe['file']} ({recipe.get('kind', 'model recipe')}): {shown} "
            "(a flag or config key overrides any of them)",
            highlight=False,
            soft_wrap=True,
        )
    return opts


def _build(stage: str, values: dict[str, Any], where: str) -> Any:
    """build(), with a value check's message (validate()) naming the file the values come from."""
    try:
        return build(STAGES[stage], values, where)
    except InputError as e:
        if where == "options" or str(e).startswith(where):
            raise
        raise InputError(f"{where}: {e}") from None


# --- the recipe that travels with a model ----------------------------------------------------------------------


def read_recipe(model: str | os.PathLike) -> dict | None:
    """The training recipe a model folder carries (`dnfbot model init-tiny` writes one: a random-init demo model
    only learns in a few dozen steps with its LM head and embeddings trained in full and a higher lr), or None.

        {"kind": "...", "stages": {"sft": {"lr": 0.003, "lora_targets": "all-linear", ...}, "rm": {...}, ...}}

    Each stage's values are options of that stage; the user's flags and config keys win over them. Real models
    carry none and keep the defaults (r 8, alpha 32, lr 1e-4, the attention projections)."""
    import json
    from pathlib import Path

    from dnfbot.models import RECIPE_FILE

    path = Path(str(model)).expanduser() / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable recipe ({str(e).splitlines()[0]}); fix or delete it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages", {}), dict):
        raise InputError(f"{path}: a recipe is a mapping with a 'stages' mapping")
    for stage, section in doc.get("stages", {}).items():
        if stage in STAGES:
            _check_section(STAGES[stage], section, str(path), f"stages.{stage}")
    return {**doc, "file": str(path)}


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def read_run_config(path: str | os.PathLike) -> dict:
    """A run config, or the one recorded in a run's summary.json; every key checked."""
    from dnfbot.config import read_yaml

    doc = read_yaml(path)
    if isinstance(doc.get("config"), dict) and "output_dir" in doc:  # a run summary
        doc = doc["config"]
    check_run_config(doc, str(path))
    return doc


def check_run_config(doc: dict, where: str) -> None:
    shared = {d.name: d for d in declared(ModelOptions)}
    for key, value in doc.items():
        if key in STAGES:
            _check_section(STAGES[key], value, where, key)
        elif key == LORA:
            _check_section(LoraOptions, {f"lora_{k}": v for k, v in _mapping(value, where, key).items()},
                           where, key, strip="lora_")  # fmt: skip
        elif key in shared:
            coerce(value, shared[key].type, f"{where}: '{key}'")
        else:
            raise InputError(
                f"{where}: unknown key '{key}' (the top level holds {', '.join(shared)} and "
                f"'{LORA}:'; stage options go in a section: {', '.join(STAGES)})"
            )


def stage_values(doc: dict, stage: str, where: str) -> dict[str, Any]:
    """The values a run config gives `stage`: top level, then `lora:`, then the stage's own section."""
    own = names(STAGES[stage])
    top = {k: v for k, v in doc.items() if k not in STAGES and k != LORA}
    lora = {f"lora_{k}": v for k, v in (doc.get(LORA) or {}).items()}
    merged = {**top, **lora, **(doc.get(stage) or {})}
    return {k: v for k, v in merged.items() if k in own}


def run_config(stage: str, opts: Any) -> dict[str, Any]:
    """The resolved options as a run config (what summary.json records, so that --config reproduces the run)."""
    values = as_dict(opts)
    doc = {k: values.pop(k) for k in list(values) if k in names(ModelOptions)}
    lora = {k.removeprefix("lora_"): values.pop(k) for k in list(values) if k in names(LoraOptions)}
    if lora:
        doc[LORA] = lora
    doc[stage] = values
    return doc


def require_model(opts: Any, config: str | os.PathLike | None) -> str:
    if not opts.model:
        raise InputError(
            "give --model (a local model directory or hub id)"
            + (f" or 'model:' in {config}" if config else "")
        )
    return opts.model


def _check_positive(opts: Any, *fields: str) -> None:
    for name in fields:
        if not getattr(opts, name) > 0:
            raise InputError(f"{name} {getattr(opts, name)}: must be > 0")


def _check_at_least(opts: Any, least: float, *fields: str) -> None:
    for name in fields:
        if getattr(opts, name) < least:
            raise InputError(f"{name} {getattr(opts, name)}: must be >= {least}")


def _check_lora(opts: Any) -> None:
    _check_at_least(opts, 1, "lora_r")
    _check_positive(opts, "lora_alpha")
    if not 0 <= opts.lora_dropout < 1:
        raise InputError(f"lora_dropout {opts.lora_dropout}: must be in [0, 1)")


def _mapping(value: Any, where: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: '{key}' must be a mapping")
    return value


def _check_section(cls: type, value: Any, where: str, key: str, strip: str = "") -> None:
    fields = {d.name: d for d in declared(cls)}
    for name, v in _mapping(value, where, key).items():
        label = f"{key}.{name.removeprefix(strip)}"
        if name not in fields:
            known = ", ".join(n.removeprefix(strip) for n in fields)
            raise InputError(f"{where}: unknown key '{label}' (known: {known})")
        coerce(v, fields[name].type, f"{where}: '{label}'")
