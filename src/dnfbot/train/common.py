"""What every training stage shares: options from YAML + flags, data loading, prompt/completion split, the
metrics JSONL, progress lines, resume from the last complete checkpoint, the run summary and the model card.

Kept free of torch at import time except for `MetricsCallback` (a transformers TrainerCallback), which is built
on first use, so PPO or any hand-written loop can use `MetricsWriter` alone.

Output layout of a run directory (SFT, RM; PPO may follow it):
    metrics.jsonl       one JSON object per log event: {"step", "loss", "lr", "tokens_per_s", "eta_s", ...};
                        append-only: a resumed run appends {"event": "resume", "step": N} and re-logs from N+1
                        (readers keep the last record of each step)
    summary.json        the run summary that `--json` prints
    README.md           model card: base model, data, hyper-parameters, final metrics
    checkpoint-N/       Trainer checkpoints (resume from the newest complete one)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.formats import ANSWER_TAG, EOS, format_prompt
from dnfbot.io import JsonlAppender, atomic_write_json, atomic_write_text, iter_jsonl, read_text

# --- prompts ---------------------------------------------------------------------------------------------------


def model_prompt(prompt_or_question: str) -> str:
    """The text the model is conditioned on: '### 질문: {q}\\n\\n### 답변:' (no trailing space).

    Accepts a bare question or an already formatted prompt. The trailing space of `format_prompt` is dropped
    because the byte-level BPE glues a space onto the next word (' 네'): training on 'prompt:' + ' answer' and
    generating from 'prompt:' keep the token boundary the same at training and inference time."""
    text = (
        prompt_or_question if ANSWER_TAG.strip() in prompt_or_question else format_prompt(prompt_or_question)
    )
    return text.rstrip()


def split_prompt_completion(prompt: str, completion: str) -> tuple[str, str]:
    """(prompt, completion) with the whitespace at the boundary moved onto the completion (see model_prompt)."""
    p = model_prompt(prompt)
    c = completion.strip()
    if c.endswith(EOS):
        c = c[: -len(EOS)].rstrip()
    return p, " " + c


def split_text_record(text: str) -> tuple[str, str] | None:
    """'### 질문: q\\n\\n### 답변: a<|endoftext|>' → (prompt, answer), or None when the text has no answer tag."""
    tag = ANSWER_TAG.strip()
    i = text.find(tag)
    if i < 0:
        return None
    return text[: i + len(tag)], text[i + len(tag) :]


# --- data ------------------------------------------------------------------------------------------------------


def load_records(path: str | os.PathLike, fields: Iterable[str], *, limit: int | None = None) -> list[dict]:
    """Read a JSONL (or JSON array) dataset; every record must have non-empty string `fields`.

    SFT records without "prompt"/"completion" but with a "text" in the prompt format are split on the answer
    tag; {"question", "answer"} records map to prompt/completion. Errors name the file and line."""
    path = Path(path)
    fields = list(fields)
    if path.suffix == ".json":
        raw = json.loads(read_text(path))
        if not isinstance(raw, list):
            raise InputError(f"{path}: expected a JSON array of objects (or use .jsonl)")
        rows: Iterable[tuple[int, dict]] = enumerate(raw, start=1)
    else:
        rows = enumerate(iter_jsonl(path), start=1)
    out: list[dict] = []
    for i, rec in rows:
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{i}: expected a JSON object")
        if (
            "prompt" in fields
            and "completion" in fields
            and "prompt" not in rec
            and isinstance(rec.get("text"), str)
        ):
            split = split_text_record(rec["text"])
            if split:
                rec = {**rec, "prompt": split[0], "completion": split[1]}
        # plain {"question", "answer"} records (the synth helper's Q&A files) stand for prompt/completion
        if "prompt" in fields and "prompt" not in rec and isinstance(rec.get("question"), str):
            rec = {**rec, "prompt": rec["question"]}
        if "completion" in fields and "completion" not in rec and isinstance(rec.get("answer"), str):
            rec = {**rec, "completion": rec["answer"]}
        for f in fields:
            v = rec.get(f)
            if not isinstance(v, str) or not v.strip():
                raise InputError(
                    f"{path}:{i}: missing or empty field '{f}' (each record needs {', '.join(fields)})"
                )
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: empty dataset (no records)")
    return out


def hash_split(records: list[dict], key: str, valid_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, valid): records marked split=valid/validation/test go to valid; otherwise a stable hash of `key`
    picks `valid_fraction` of them. Small sets (where that rounds to 0) keep everything for training."""
    marked = [
        r for r in records if str(r.get("split", "")).lower() in ("valid", "validation", "test", "eval")
    ]
    if marked:
        return [r for r in records if r not in marked], marked
    n_valid = int(len(records) * valid_fraction)
    if n_valid == 0:
        return records, []

    def h(r: dict) -> str:
        return hashlib.sha256(str(r.get(key, "")).encode("utf-8")).hexdigest()

    order = sorted(range(len(records)), key=lambda i: h(records[i]))
    valid_idx = set(order[:n_valid])
    return [r for i, r in enumerate(records) if i not in valid_idx], [records[i] for i in sorted(valid_idx)]


# --- options ---------------------------------------------------------------------------------------------------


def load_yaml_config(path: str | os.PathLike | None) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def flatten_config(data: dict, stage: str, *, path: str | os.PathLike | None = None) -> dict:
    """A YAML run config → flat option names for one stage: top-level keys (model, load_in_4bit, ...), the `lora`
    section as lora_* and the stage's own section (`sft`, `rm`, `generate`) win in that order."""
    stage_sections = {"sft", "rm", "ppo", "generate", "accelerate", "notes", "bench"}
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k == "lora":
            if not isinstance(v, dict):
                raise InputError(f"{path}: 'lora' must be a mapping")
            flat.update({f"lora_{kk}": vv for kk, vv in v.items()})
        elif k not in stage_sections:
            flat[k] = v
    section = data.get(stage) or {}
    if not isinstance(section, dict):
        raise InputError(f"{path}: '{stage}' must be a mapping")
    flat.update(section)
    return flat


def merge_options(cls: type, config: dict, overrides: dict, *, path: str | os.PathLike | None = None) -> Any:
    """Dataclass `cls` from its defaults, then `config` (flat YAML), then `overrides` that are not None."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for k, v in config.items():
        if k not in names:
            raise InputError(f"{path or 'config'}: unknown option '{k}' (known: {', '.join(sorted(names))})")
        values[k] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as e:
        raise InputError(f"{path or 'config'}: {e}") from None


# --- metrics ---------------------------------------------------------------------------------------------------


class MetricsWriter:
    """Append-only metrics JSONL plus one human progress line per record on stderr.

    `log(step, **values)` adds {"step", "time", **values}; with `total_steps` known it also reports an ETA."""

    def __init__(self, path: str | os.PathLike, *, total_steps: int | None = None, echo: bool = True):
        self.path = Path(path)
        self.total_steps = total_steps
        self.echo = echo
        self._out = JsonlAppender(self.path)
        self._t0 = time.time()
        self._step0: int | None = None

    def log(self, step: int, **values: Any) -> dict:
        now = time.time()
        if self._step0 is None:
            self._step0 = step
        rec: dict[str, Any] = {"step": step, "time": round(now, 3)}
        rec.update({k: _clean(v) for k, v in values.items() if v is not None})
        if self.total_steps and step > self._step0:
            per_step = (now - self._t0) / (step - self._step0)
            rec["eta_s"] = round(per_step * max(self.total_steps - step, 0), 1)
        self._out.write(rec)
        if self.echo:
            self._print(rec)
        return rec

    def event(self, name: str, **values: Any) -> None:
        self._out.write({"event": name, "time": round(time.time(), 3), **values})

    def _print(self, rec: dict) -> None:
        from dnfbot.cli_util import console

        parts = [f"step {rec['step']}" + (f"/{self.total_steps}" if self.total_steps else "")]
        for k in ("loss", "eval_loss", "eval_accuracy", "accuracy", "reward", "kl", "lr", "tokens_per_s"):
            if k in rec:
                v = rec[k]
                parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        if "eta_s" in rec:
            parts.append(f"ETA {_fmt_secs(rec['eta_s'])}")
        console.print("  ".join(parts), highlight=False, soft_wrap=True)

    def close(self) -> None:
        self._out.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Step records of a metrics.jsonl, last record per (step, kind) wins (a resumed run re-logs steps)."""
    recs = [r for r in iter_jsonl(path, allow_torn_tail=True) if "step" in r and "event" not in r]
    out: dict[tuple[int, bool], dict] = {}
    for r in recs:
        out[(r["step"], any(k.startswith("eval_") for k in r))] = r
    return [out[k] for k in sorted(out)]


_TRAINER_KEYS = {
    "loss": "loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "epoch": "epoch",
    "num_tokens": "num_tokens",
    "mean_token_accuracy": "token_accuracy",
    "accuracy": "accuracy",
    "margin": "margin",
    "mean_reward": "mean_reward",
}


def metrics_callback(writer: MetricsWriter) -> Any:
    """A transformers TrainerCallback that forwards every Trainer log to `writer`, with tokens/s computed from the
    trainer's token counter (TRL's `num_tokens`)."""
    from transformers import TrainerCallback

    class _MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last: tuple[float, float] | None = None  # (time, num_tokens)
            self.first_loss: float | None = None
            self.last_loss: float | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            writer.total_steps = state.max_steps
            if state.global_step > 0:
                writer.event("resume", step=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the end-of-training aggregate, not a step
                return
            rec: dict[str, Any] = {}
            for k, v in logs.items():
                if k.startswith("eval_"):
                    rec[k] = v
                elif k in _TRAINER_KEYS:
                    rec[_TRAINER_KEYS[k]] = v
            now = time.time()
            tokens = logs.get("num_tokens")
            if tokens is not None:
                if self.last is not None and now > self.last[0] and tokens > self.last[1]:
                    rec["tokens_per_s"] = round((tokens - self.last[1]) / (now - self.last[0]), 1)
                self.last = (now, tokens)
            if "loss" in rec:
                self.first_loss = rec["loss"] if self.first_loss is None else self.first_loss
                self.last_loss = rec["loss"]
            writer.log(state.global_step, **rec)

    return _MetricsCallback()


def training_args(opts: Any, out: str | os.PathLike, *, has_eval: bool) -> dict:
    """transformers TrainingArguments shared by the SFT and reward trainers (TRL's configs extend them);
    each stage adds its own keys. `opts.extra` (config keys dnfbot has no option for) pass through."""
    import torch

    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(out),
        learning_rate=opts.lr,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        max_length=opts.max_length,
        warmup_steps=opts.warmup_steps,
        lr_scheduler_type=opts.lr_scheduler,
        weight_decay=opts.weight_decay,
        optim=opts.optim,
        logging_steps=opts.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=opts.save_steps,
        save_total_limit=opts.save_total_limit,
        eval_strategy="steps" if (opts.eval_steps and has_eval) else "no",
        eval_steps=opts.eval_steps,
        seed=opts.seed,
        data_seed=opts.seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=on_gpu,
        report_to="none",
        disable_tqdm=True,
        **opts.extra,
    )


def quiet_trainer(trainer: Any) -> None:
    """No dict printing on stdout (stdout is for --json): drop the Trainer's PrinterCallback/ProgressCallback."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# --- checkpoints -----------------------------------------------------------------------------------------------


def last_complete_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint-N that was fully written (trainer_state.json is saved last), or None."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    ckpts = []
    for d in out.glob("checkpoint-*"):
        suffix = d.name.split("-", 1)[1]
        if d.is_dir() and suffix.isdigit() and (d / "trainer_state.json").exists():
            ckpts.append((int(suffix), d))
    return max(ckpts)[1] if ckpts else None


def checkpoint_step(ckpt: Path | None) -> int:
    if ckpt is None:
        return 0
    return int(json.loads((ckpt / "trainer_state.json").read_text())["global_step"])


def prepare_output_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool = False) -> Path | None:
    """Create the run dir. Returns the checkpoint to resume from (resume=True), refuses to mix runs otherwise."""
    out = Path(out_dir)
    ckpt = last_complete_checkpoint(out)
    if resume:
        out.mkdir(parents=True, exist_ok=True)
        return ckpt
    if ckpt is not None and not overwrite:
        raise InputError(
            f"{out}: holds checkpoints of an earlier run; pass --resume to continue it or --overwrite to start over"
        )
    if overwrite and out.exists():
        import shutil

        for d in out.glob("checkpoint-*"):
            shutil.rmtree(d, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def save_final(trainer: Any, out_dir: str | os.PathLike) -> None:
    """Save the adapter (+ head) and tokenizer as safetensors / JSON. The Trainer also pickles its arguments
    (training_args.bin) next to them: dropped, so a finished run dir holds no pickle (checkpoints keep theirs,
    resume needs the optimizer state)."""
    trainer.save_model(str(out_dir))
    (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)


# --- summary and model card ------------------------------------------------------------------------------------


def write_summary(out_dir: str | os.PathLike, summary: dict) -> Path:
    path = Path(out_dir) / "summary.json"
    atomic_write_json(path, _clean(summary))
    return path


def write_model_card(
    out_dir: str | os.PathLike, *, title: str, summary: dict, options: dict, usage: str
) -> Path:
    """README.md in the run dir: what was trained on what, with which settings, and how it ended."""
    metrics = {
        k: v
        for k, v in summary.items()
        if k not in ("options", "output_dir", "model", "data", "eval_data") and not isinstance(v, dict | list)
    }
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {summary.get('model')}",
        "tags: [dnfbot, lora, korean]",
        "---",
        f"# {title}",
        "",
        f"- Base model: `{summary.get('model')}`",
        f"- Training data: `{summary.get('data')}` ({summary.get('train_records')} records)"
        + (f"; validation: {summary.get('valid_records')} records" if summary.get("valid_records") else ""),
        "- Prompt format: `### 질문: {question}\\n\\n### 답변: {answer}<|endoftext|>`",
        "",
        "## Hyper-parameters",
        "",
        "| option | value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in options.items()],
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics.items()],
        "",
        "## Use",
        "",
        "```bash",
        usage,
        "```",
        "",
        "Trained with [dnfbot](https://github.com/) (TRL + PEFT). Curves: `dnfbot plot metrics <this dir>`.",
        "",
    ]
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def set_threads(n: int | None) -> None:
    """Cap torch's CPU threads (shared CI machines); None = leave torch's default."""
    if n:
        import torch

        torch.set_num_threads(n)


# --- small helpers ---------------------------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _clean(v.item())
    return v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_secs(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
