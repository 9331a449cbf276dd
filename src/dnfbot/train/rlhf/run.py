"""What every RLHF run shares, PPO (ppo.py) and GRPO/RLOO through TRL (trl.py) alike: the prompts and their
held-out split, the models, the run directory (config.json, eval_before/after.jsonl, summary.json), the
reward statistics, the before/after evaluation and the proof that the reference stayed frozen — so that
`dnfbot report rlhf` reads any of them and their numbers compare like for like.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dnfbot.datasets.splits import hold_out
from dnfbot.errors import InputError
from dnfbot.formats import model_prompt
from dnfbot.io import atomic_write_json, iter_records, read_jsonl, write_jsonl
from dnfbot.options import as_dict
from dnfbot.train.common import read_metrics, write_summary
from dnfbot.train.options import PPOOptions, run_config
from dnfbot.train.rlhf.dist import Dist
from dnfbot.train.rlhf.models import POLICY, PPOModels, build_models, models_storage_bytes
from dnfbot.train.rlhf.rollout import (
    Rollout,
    kl_estimates,
    left_pad,
    reference_logprobs,
    rollout,
)

# --- data ------------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from .jsonl ({"prompt": ...} per line) or .json (a list of such objects).

    A missing or non-text 'prompt' is an error; an empty one is skipped (the public KoChatGPT PPO file has three)."""
    prompts = []
    for where, rec in iter_records(path):
        p = rec.get("prompt")
        if not isinstance(p, str):
            raise InputError(f"{where}: missing field 'prompt'")
        if p.strip():
            prompts.append(p.strip())
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


# below this many training prompts PPO memorises its prompts; below a batch it warns (issue 13: 1 prompt, silently)
MIN_TRAIN_PROMPTS = 4


def split_prompts(path: str | Path, n_eval: int, seed: int) -> tuple[list[str], list[str], str]:
    """(train, held out, where the held-out ones come from). A file whose records carry a "split" (what
    `dnfbot data ppo` writes) trains on split=train and evaluates on split=valid (at most `n_eval` of them);
    a file without one holds out `n_eval` prompts drawn with `seed`."""
    from dnfbot.datasets.splits import is_valid

    rows = []
    for where, rec in iter_records(path):
        p = rec.get("prompt")
        if not isinstance(p, str):
            raise InputError(f"{where}: missing field 'prompt'")
        if p.strip():
            rows.append((p.strip(), rec))
    if not rows:
        raise InputError(f"{path}: no prompts")
    if any("split" in rec for _, rec in rows):
        train = [p for p, rec in rows if not is_valid(rec)]
        valid = [p for p, rec in rows if is_valid(rec)]
        if valid:
            _, held = hold_out(valid, n_eval, seed) if len(valid) > n_eval else ([], valid)
            return train, held, f"the file's split=valid ({len(held)} of {len(valid)})"
        train, held = hold_out(train, n_eval, seed)
        return (
            train,
            held,
            f"{len(held)} drawn from the training prompts (the file has no split=valid record)",
        )
    train, held = hold_out([p for p, _ in rows], n_eval, seed)
    return train, held, f"{len(held)} drawn with seed {seed} (the file has no split field)"


def encode_queries(prompts: list[str], tokenizer: Any, max_tokens: int) -> list[tuple[str, list[int]]]:
    out = []
    for p in prompts:
        # the exact prompt text SFT and RM were trained on ('### 질문: …\n\n### 답변:'), see formats.py
        ids = tokenizer(model_prompt(p), add_special_tokens=False)["input_ids"]
        if 0 < len(ids) <= max_tokens:
            out.append((p, ids))
    return out


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Prompts for `step` (1-based): consecutive slices of a fresh permutation per epoch — no state to save."""
    out, cache = [], {}
    for pos in range((step - 1) * batch_size, step * batch_size):
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)
            ).tolist()
        out.append(cache[epoch][pos % n])
    return out


# --- the run: set-up, evaluation, summary ----------------------------------------------------------------------


@dataclass
class Run:
    out: Path
    models: PPOModels
    train_items: list[tuple[str, list[int]]]
    eval_items: list[tuple[str, list[int]]]
    checkpoint: Path | None  # to resume from
    dist: Dist = field(default_factory=Dist)  # this process's place in a multi-process run (rlhf/dist.py)


def start_run(
    opts: PPOOptions,
    *,
    prompts: str | Path,
    out_dir: str | Path,
    sft_adapter: str | Path | None = None,
    reward_adapter: str | Path | None = None,
    resume: bool = True,
    find_checkpoint: Callable[[Path], Path | None],
    with_reference: bool,
    gradient_checkpointing: bool,
    force: bool = False,
    echo: bool = True,
    dist: Dist | None = None,
) -> Run:
    """Validate, refuse to mix runs, load prompts and models, split held-out prompts, write config.json.

    sft_adapter: the policy starts from it (else a fresh LoRA); reward_adapter: the reward model's LoRA on the
    same base; resume: continue from the last complete checkpoint in `out_dir` (else refuse to mix runs) — with
    the options it was started with (a changed one is refused unless `force`); echo: the prompt split on stderr."""
    opts.validate()
    dist = dist or Dist()
    echo = echo and dist.main
    out = Path(out_dir)
    found = find_checkpoint(out)
    if not resume and found is not None:
        raise InputError(f"{out}: already holds checkpoints; resume (the default) or choose another --out")
    if found is not None and resume and not force:
        check_same_config(out / "config.json", opts, sft_adapter, reward_adapter, prompts)
    torch.manual_seed(opts.seed)
    train_prompts, eval_prompts, held_note = split_prompts(prompts, opts.eval_prompts, opts.seed)
    train_prompts = train_prompts[: opts.limit or None]
    if len(train_prompts) < MIN_TRAIN_PROMPTS:
        raise InputError(
            f"{prompts}: {len(train_prompts)} training prompt(s) (split=train); PPO needs at least "
            f"{MIN_TRAIN_PROMPTS} — `dnfbot data ppo` writes both splits, or add --import of a prompt file"
        )
    if echo:
        from dnfbot.console import console

        warn = len(train_prompts) < opts.batch_size
        console.print(
            ("[bold yellow]warning[/]: " if warn else "")
            + f"{prompts}: {len(train_prompts)} training prompts"
            + (f" — fewer than one batch ({opts.batch_size}): each is seen many times" if warn else "")
            + f"; held-out: {held_note}",
            highlight=False,
            soft_wrap=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(
        opts.model,
        sft_adapter=sft_adapter,
        reward_adapter=reward_adapter,
        reward_model=opts.reward_model,
        load_in_4bit=opts.load_in_4bit,
        dtype=opts.dtype,
        trust_remote_code=opts.trust_remote_code,
        lora=opts,
        gradient_checkpointing=gradient_checkpointing,
        with_reference=with_reference,
        seed=opts.seed,
    )
    train_items = encode_queries(train_prompts, models.tokenizer, opts.max_prompt_tokens)
    # each held-out prompt eval_samples times (prompt-major): the evaluation's seeds differ per position
    eval_items = [
        item
        for item in encode_queries(eval_prompts, models.tokenizer, opts.max_prompt_tokens)
        for _ in range(opts.eval_samples)
    ]
    if not train_items:
        raise InputError(f"{prompts}: no training prompt fits in max_prompt_tokens={opts.max_prompt_tokens}")
    config = {
        "algo": opts.algo,
        "model": str(opts.model),
        "sft_adapter": _str(sft_adapter),
        "reward_adapter": _str(reward_adapter),
        "reward_model": opts.reward_model,
        "prompts": str(prompts),
        "load_in_4bit": opts.load_in_4bit,
        "n_train_prompts": len(train_items),
        "n_eval_prompts": len(eval_items) // opts.eval_samples,
        "eval_samples": opts.eval_samples,
        "held_out": held_note,
        "recipe": getattr(opts, "recipe", None),
        "ppo": as_dict(opts),
        "processes": dist.world,
    }
    if dist.main:
        atomic_write_json(out / "config.json", config)
    return Run(out, models, train_items, eval_items, found if resume else None, dist)


# options that may change on resume: they do not change what is trained (logging, checkpoints, threads)
RESUMABLE_CHANGES = {"save_every", "keep_checkpoints", "threads", "forward_batch_size", "report_to"}


def check_same_config(
    path: Path, opts: PPOOptions, sft_adapter: Any, reward_adapter: Any, prompts: Any
) -> None:
    """A resumed run continues the same schedule: refuse one whose options or inputs differ from config.json."""
    if not path.exists():
        return
    import json

    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(
            f"{path}: unreadable; pass --force to resume anyway (or choose another --out)"
        ) from None
    now = as_dict(opts)
    changed = [
        f"{k} {v!r} -> {now[k]!r}"
        for k, v in (stored.get("ppo") or {}).items()
        if k in now and k not in RESUMABLE_CHANGES and v != now[k]
    ]
    for key, value in (
        ("sft_adapter", sft_adapter),
        ("reward_adapter", reward_adapter),
        ("prompts", prompts),
    ):
        if key in stored and stored[key] != _str(value):
            changed.append(f"{key} {stored[key]!r} -> {_str(value)!r}")
    if changed:
        raise InputError(
            f"{path.parent}: resuming with other settings than the run started with ({'; '.join(changed[:4])}"
            f"{' …' if len(changed) > 4 else ''}); give the same ones, --force to resume anyway, or another --out"
        )


def evaluate_before(run: Run, opts: PPOOptions) -> list[dict]:
    """The held-out evaluation of the initial policy, computed once (a resumed run keeps it)."""
    path = run.out / "eval_before.jsonl"
    if path.exists():
        return read_jsonl(path)
    before = evaluate(run.models, run.eval_items, opts, opts.seed + 1, run.dist) if run.eval_items else []
    if run.dist.main:
        write_jsonl(path, before)
    return before


def evaluate_after(run: Run, opts: PPOOptions) -> list[dict]:
    after = evaluate(run.models, run.eval_items, opts, opts.seed + 1, run.dist) if run.eval_items else []
    if run.dist.main:
        write_jsonl(run.out / "eval_after.jsonl", after)
    return after


def rollout_share(
    models: PPOModels, dist: Dist, items: list[tuple[str, list[int]]], opts: PPOOptions, seed: int
) -> tuple[range, Rollout]:
    """This rank's share of a global batch of `items`, sampled as one process would sample it (rlhf/dist.py)."""
    mine = dist.shard(len(items))
    width = max(len(ids) for _, ids in items)
    ro = rollout(
        models, [items[i][1] for i in mine], opts, seed=seed * 1_000_003, offset=mine.start, pad_to=width
    )
    return mine, ro


def initial_rollout(run: Run, opts: PPOOptions) -> Rollout:
    """The initial policy's responses to `norm_samples` training prompts (this rank's share): the reward
    statistics and the value warm-up are computed from them."""
    items = [
        run.train_items[i] for i in batch_indices(1, len(run.train_items), opts.norm_samples, opts.seed + 7)
    ]
    return rollout_share(run.models, run.dist, items, opts, opts.seed + 2)[1]


def score_statistics(run: Run, opts: PPOOptions, ro: Rollout | None = None) -> tuple[float, float]:
    """Mean and std of the reward model's scores for the initial policy's responses (all ranks'): normalising with
    them makes the reward scale (and the KL coefficient) mean the same for any reward model. (0, 1) when off."""
    if not opts.normalize_reward:
        return 0.0, 1.0
    ro = ro if ro is not None else initial_rollout(run, opts)
    scores = torch.tensor(run.dist.gather(ro.scores.float().cpu().tolist()))
    return float(scores.mean()), max(float(scores.std()) if len(scores) > 1 else 1.0, 1e-3)


@torch.no_grad()
def evaluate(
    models: PPOModels,
    items: list[tuple[str, list[int]]],
    cfg: PPOOptions,
    seed: int,
    dist: Dist | None = None,
) -> list[dict]:
    """Sample one response per held-out prompt with a fixed seed (the same with any number of processes: each
    rolls out its share and the records are gathered); score, KL to the reference, length."""
    dist = dist or Dist()
    mine, ro = rollout_share(models, dist, items, cfg, seed)
    k1, _ = kl_estimates(ro.logprobs, ro.ref_logprobs)
    records = []
    seen: dict[str, int] = {}
    sample = []  # which response of its prompt each item is (eval_samples > 1 repeats a prompt)
    for prompt, _ in items:
        sample.append(seen.get(prompt, 0))
        seen[prompt] = sample[-1] + 1
    for i, (prompt, _) in enumerate(items[mine.start : mine.stop]):
        m = ro.response_mask[i].bool()
        resp = ro.response_ids[i][m].tolist()
        records.append(
            {
                "prompt": prompt,
                "sample": sample[mine.start + i],
                "response": models.tokenizer.decode(resp, skip_special_tokens=True),
                "reward": float(ro.scores[i]),
                "kl": float((k1[i] * m).sum()),
                "length": len(resp),
                "has_eos": bool(ro.has_eos[i]),
                "response_ids": resp,
                "ref_logprob": float(ro.ref_logprobs[i][m].sum()),
            }
        )
    return dist.gather(records)


@torch.no_grad()
def reference_logprob_sums(
    models: PPOModels, items: list[tuple[str, list[int]]], records: list[dict], cfg: PPOOptions
) -> list[float]:
    """Reference log-prob of given (query, response) pairs — to prove the reference did not move."""
    q_ids, q_mask = left_pad([ids for _, ids in items], models.tokenizer.pad_token_id)
    width = max(len(r["response_ids"]) for r in records)
    out = []
    for i in range(0, len(items), cfg.forward_batch_size):
        rows = records[i : i + cfg.forward_batch_size]
        resp = torch.full((len(rows), width), models.tokenizer.pad_token_id, dtype=torch.long)
        r_mask = torch.zeros_like(resp)
        for j, r in enumerate(rows):
            resp[j, : len(r["response_ids"])] = torch.tensor(r["response_ids"], dtype=torch.long)
            r_mask[j, : len(r["response_ids"])] = 1
        ids = torch.cat([q_ids[i : i + len(rows)], resp], 1).to(models.device)
        mask = torch.cat([q_mask[i : i + len(rows)], r_mask], 1).to(models.device)
        logp = reference_logprobs(models, ids, mask, q_ids.shape[1], cfg.temperature)
        out.extend(float(x) for x in (logp * r_mask.to(logp.device)).sum(1))
    return out


def reference_is_frozen(models: PPOModels, eval_items: list, before: list[dict], cfg: PPOOptions) -> bool:
    """The reference log-probs of the held-out 'before' responses are the same now as at the start."""
    if not before:
        return True
    now = reference_logprob_sums(models, eval_items, before, cfg)
    return all(
        math.isclose(a, r["ref_logprob"], rel_tol=1e-5, abs_tol=1e-4)
        for a, r in zip(now, before, strict=True)
    )


def save_policy(models: PPOModels, out: Path, value_head: bool = True) -> None:
    """Policy adapter (+ value head + tokenizer) in PEFT format: base + this adapter = the trained policy."""
    from safetensors.torch import save_file

    models.lm.save_pretrained(str(out), selected_adapters=[POLICY])
    models.tokenizer.save_pretrained(str(out))
    if not value_head:
        return
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in models.value_head.state_dict().items()},
        str(out / "value_head.safetensors"),
    )


def summary_of(records: list[dict]) -> dict[str, float]:
    n = max(len(records), 1)
    return {
        "reward": sum(r["reward"] for r in records) / n,
        "kl": sum(r["kl"] for r in records) / n,
        "length": sum(r["length"] for r in records) / n,
        "eos_rate": sum(r["has_eos"] for r in records) / n,
    }


def finish_summary(
    run: Run,
    opts: PPOOptions,
    before: list[dict],
    after: list[dict],
    resumed_from: str | None,
    elapsed: float,
) -> dict[str, Any]:
    """Write summary.json (with the resolved options as a run config); returns it without them."""
    out, models = run.out, run.models
    b, a = summary_of(before), summary_of(after)
    metrics = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    tps = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    summary = {
        "output_dir": str(out),
        "algo": opts.algo,
        "steps": opts.steps,
        "reward_before": b["reward"],
        "reward_after": a["reward"],
        "mean_kl": a["kl"],
        "response_length_before": b["length"],
        "response_length_after": a["length"],
        "eos_rate_before": b["eos_rate"],
        "eos_rate_after": a["eos_rate"],
        "n_eval_prompts": len(after) // opts.eval_samples,
        "n_eval_responses": len(after),
        "reference_frozen": reference_is_frozen(models, run.eval_items, before, opts),
        "reference_shares_base": models.ref_model is None,
        "reward_shares_base": models.reward.shared,
        "parameter_bytes": models_storage_bytes(models),
        "tokens_per_s": sum(tps) / len(tps) if tps else None,
        "resumed_from": resumed_from,
        "recipe": getattr(opts, "recipe", None),
        "elapsed_s": round(elapsed, 1),
        "adapter": str(out / "adapter"),
        "config": run_config("ppo", opts),
    }
    write_summary(out, summary)
    return {k: v for k, v in summary.items() if k != "config"}


def _str(x: Any) -> str | None:
    return None if x is None else str(x)
