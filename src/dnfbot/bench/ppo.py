"""`dnfbot bench ppo`: peak memory of one PPO step against one SFT step on the same model and data shape.

Three set-ups, each measured in a fresh Python process so that one cannot inherit another's memory:
    sft     base + LoRA adapter; one optimizer step on `batch` sequences of prompt+response tokens
            (forward with labels over the whole sequence, backward, AdamW) — what `dnfbot train sft` does per step
    ppo     dnfbot's PPO: ONE base with the policy adapter (+ value head), the reference as a frozen adapter copy
            and the reward model as a third adapter; one full PPO iteration: sample `batch` responses, score them
            (policy, reference, values, reward), then `ppo_epochs` clipped updates with micro-batch = `batch`
    naive   the same PPO iteration with policy, reference and reward model loaded as three full models — the
            set-up that did not fit for polyglot-ko-12.8B in the original project

Peak memory: on a GPU `torch.cuda.max_memory_allocated()`; on a CPU the peak resident set size of the process
during the measured step (VmHWM, reset after a warm-up step) minus the resident size after importing torch and
transformers — i.e. weights + optimizer state + activations, without the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.options import command_line, option

MIB = 1024 * 1024


def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (Linux); {} elsewhere."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    """One set-up, in this process: build it, run a warm-up step, then measure one step."""
    import torch
    import transformers  # noqa: F401 - imported before the baseline so it is not counted

    from dnfbot.train.options import PPOOptions
    from dnfbot.train.rlhf.models import build_models, parameter_storage
    from dnfbot.train.rlhf.ppo import KLController, ppo_step
    from dnfbot.train.rlhf.rollout import rollout

    cuda = torch.cuda.is_available()
    baseline = _proc_status().get("VmRSS", 0)
    B, P, N = args["batch_size"], args["prompt_tokens"], args["new_tokens"]
    g = torch.Generator().manual_seed(0)

    if mode == "sft":
        from dnfbot.models import add_lora, load_model

        lm, tok = load_model(
            args["model"],
            load_in_4bit=args["load_in_4bit"],
            adapter=args["sft_adapter"],
            adapter_trainable=True,
        )
        if not hasattr(lm, "peft_config"):
            lm = add_lora(lm)
        if args["gradient_checkpointing"]:
            lm.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        device = next(lm.parameters()).device
        opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-5)
        ids = torch.randint(3, len(tok), (B, P + N), generator=g).to(device)
        labels = ids.clone()
        labels[:, :P] = -100  # loss on the answer tokens only, as SFT does
        weights = sum(parameter_storage(lm).values())

        def step() -> int:
            lm.train()
            loss = lm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return B * N

    else:
        models = build_models(
            args["model"],
            sft_adapter=args["sft_adapter"],
            reward_adapter=args["reward_adapter"],
            load_in_4bit=args["load_in_4bit"],
            share_base=mode == "ppo",
            gradient_checkpointing=args["gradient_checkpointing"],
        )
        cfg = PPOOptions(
            batch_size=B,
            mini_batch_size=B,
            micro_batch_size=B,
            forward_batch_size=B,
            max_new_tokens=N,
            max_prompt_tokens=P,
            temperature=1.0,
        )
        opt = torch.optim.AdamW(models.trainable_parameters(), lr=1e-5, eps=cfg.adam_eps)
        kl = KLController(cfg.kl_coef)
        queries = torch.randint(3, len(models.tokenizer), (B, P), generator=g).tolist()
        rm = None if models.reward.shared else models.reward.model
        weights = sum(parameter_storage(models.lm, models.value_head, models.ref_model, rm).values())

        def step() -> int:
            ro = rollout(models, queries, cfg)
            ppo_step(models, opt, ro, kl, cfg, 0.0, 1.0, torch.Generator().manual_seed(1))
            return int(ro.response_mask.sum())

    step()  # warm-up: optimizer state, allocator pools
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset_ok = _reset_peak()
    t0, c0 = time.time(), time.process_time()
    tokens = step()
    if cuda:
        torch.cuda.synchronize()
    elapsed, cpu_s = time.time() - t0, time.process_time() - c0
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated"
    else:
        peak = _proc_status().get("VmHWM", 0) - baseline
        how = "peak RSS of the step - RSS after imports" + (
            "" if reset_ok else " (peak not reset: whole run)"
        )
    return {
        "mode": mode,
        "peak_bytes": peak,
        "weights_bytes": weights,
        "step_s": elapsed,
        "cpu_s": cpu_s,  # CPU time of this process: robust on a shared machine, where wall time is not
        "tokens": tokens,
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "memory_measure": how,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def _run_isolated(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dnfbot.bench.ppo", mode, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench ppo: the {mode} measurement failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make_model(work: Path, arch: str, size: str, tokenizer: Path) -> tuple[str, str, str]:
    """A random-init base with fresh SFT and reward adapters (memory does not depend on the weights' values)."""
    from peft import get_peft_model

    from dnfbot.models import default_lora_config, init_tiny, load_model

    if not tokenizer.exists():
        raise InputError(
            f"{tokenizer}: tokenizer not found (pass --model, or put the polyglot-ko tokenizer there)"
        )
    base = init_tiny(arch, tokenizer, work / "base", size=size, seed=0)
    lm, tok = load_model(base)
    get_peft_model(lm, default_lora_config(lm.config, "causal-lm")).save_pretrained(str(work / "sft"))
    rm, _ = load_model(base, task="seq-cls")
    get_peft_model(rm, default_lora_config(rm.config, "seq-cls")).save_pretrained(str(work / "rm"))
    return str(base), str(work / "sft"), str(work / "rm")


@dataclass
class PPOBench:
    """Peak memory of a PPO step vs an SFT step (and vs three full copies), tokens/s."""

    section = "ppo"
    model: str | None = option(None, "base model; default: a random-init one (--arch/--size)")
    sft_adapter: Path | None = option(None, "default: a fresh LoRA adapter")
    reward_adapter: Path | None = option(None, "default: a fresh SEQ_CLS adapter")
    arch: str = option("gpt-neox", "gpt-neox | llama (random-init model)")
    size: str = option("small", "tiny | small | 1.3b | 12.8b | 10.8b (random-init)")
    tokenizer: Path = option(Path("../shared/tokenizers/polyglot-ko"), "tokenizer of the random-init model")
    batch_size: int = option(8, "sequences per step (SFT batch = PPO rollout)")
    prompt_tokens: int = option(64, "prompt tokens per sequence")
    new_tokens: int = option(64, "response tokens (SFT: answer tokens)")
    load_in_4bit: bool = option(False, "a 4-bit base", flag="--4bit/--no-4bit")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    naive: bool = option(True, "also measure three full model copies")

    def run(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="dnfbot-bench-ppo-") as tmp:
            model, sft_adapter, reward_adapter = self.model, self.sft_adapter, self.reward_adapter
            if model is None:
                model, made_sft, made_rm = _make_model(Path(tmp), self.arch, self.size, Path(self.tokenizer))
                sft_adapter, reward_adapter = sft_adapter or made_sft, reward_adapter or made_rm
            elif reward_adapter is None:
                raise InputError("bench ppo: with --model, also give --reward-adapter (and --sft-adapter)")
            args = {
                "model": str(model),
                "sft_adapter": None if sft_adapter is None else str(sft_adapter),
                "reward_adapter": str(reward_adapter),
                "batch_size": self.batch_size,
                "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens,
                "load_in_4bit": self.load_in_4bit,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
            modes = ["sft", "ppo", "naive"] if self.naive else ["sft", "ppo"]
            results = {m: _run_isolated(m, args) for m in modes}
            n_params = _count_params(str(model))
        sft = results["sft"]["peak_bytes"]
        ratios = {m: r["peak_bytes"] / sft for m, r in results.items()}
        command = command_line("dnfbot bench ppo", self)
        return {
            "results": results,
            "ppo_vs_sft": ratios["ppo"],
            "naive_vs_sft": ratios.get("naive"),
            "target_met": ratios["ppo"] <= 1.5,
            "parameters": n_params,
            "command": command,
            "markdown": _markdown(results, ratios, n_params, command, args),
        }


def _count_params(model: str) -> int | None:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        with __import__("torch").device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
        return sum(p.numel() for p in m.parameters())
    except Exception:  # a hub id offline, an unknown architecture: the count is informative only
        return None


def _markdown(results: dict, ratios: dict, n_params: int | None, command: str, args: dict) -> str:
    names = {
        "sft": "SFT step (base + LoRA)",
        "ppo": "PPO step, dnfbot: one base (policy + value head, reference and reward model as adapters)",
        "naive": "PPO step, naive: policy, reference and reward model as three full models",
    }
    B, P, N = args["batch_size"], args["prompt_tokens"], args["new_tokens"]
    device = next(iter(results.values()))["device"]
    lines = [
        "## PPO memory (`dnfbot bench ppo`)",
        "",
        f"Command: `{command}`  ",
        f"Model: {f'{n_params / 1e6:.1f}M parameters' if n_params else '(parameter count unavailable)'}"
        f"{', 4-bit' if args['load_in_4bit'] else ''}, on {device}; batch {B} sequences of {P} prompt + {N} "
        "response tokens; PPO: 4 epochs, micro-batch = the SFT batch.",
        "",
        "| set-up | peak memory (MiB) | × SFT | weights (MiB) | step wall (s) | step CPU (s) | response tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {names[mode]} | {r['peak_bytes'] / MIB:.0f} | {ratios[mode]:.2f} | {r['weights_bytes'] / MIB:.0f} "
            f"| {r['step_s']:.2f} | {r['cpu_s']:.2f} | {r['tokens_per_s']:.0f} |"
        )
    verdict = "met" if ratios["ppo"] <= 1.5 else "NOT met"
    lines += [
        "",
        f"Target PPO step <= 1.5 × SFT step: {ratios['ppo']:.2f} × — {verdict}."
        + (f" Naive three-copy set-up: {ratios['naive']:.2f} × SFT." if "naive" in ratios else ""),
        f"Peak memory: {next(iter(results.values()))['memory_measure']}; each set-up in its own process. "
        "A PPO step includes sampling the responses and three scoring passes (policy + values, reference, "
        "reward model), so its time is not comparable with the SFT step's. On a shared CPU wall time depends on the other load; CPU time "
        "(all threads of the process) does not.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m dnfbot.bench.ppo MODE JSON_ARGS (one isolated measurement)
    print(json.dumps(measure(sys.argv[1], json.loads(sys.argv[2]))))
