"""What every training stage shares: data loading, a Trainer stage's start and finish (start_run/finish_run), the
metrics JSONL, progress lines, resume from the last complete checkpoint, the run summary and the model card.
Options and the run-config schema: train/options.py; the prompt format: formats.py.

Kept free of torch at import time except for `MetricsCallback` (a transformers TrainerCallback), which is built
on first use, so PPO or any hand-written loop can use `MetricsWriter` alone.

Output layout of a run directory (SFT, RM; PPO may follow it):
    metrics.jsonl       one JSON object per log event: {"step", "loss", "lr", "tokens_per_s", "eta_s", ...};
                        append-only: a resumed run appends {"event": "resume", "step": N} and re-logs from N+1
                        (readers keep the last record of each step)
    summary.json        the run summary that `--json` prints, plus "config": the resolved options as a run config
                        (`--config summary.json` repeats the run)
    README.md           model card: base model, data, hyper-parameters, final metrics
    checkpoint-N/       Trainer checkpoints (resume from the newest complete one)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.formats import split_text_record
from dnfbot.io import JsonlAppender, atomic_write_json, atomic_write_text, iter_jsonl, iter_records

# --- data ------------------------------------------------------------------------------------------------------


def load_records(path: str | os.PathLike, fields: Iterable[str], *, limit: int | None = None) -> list[dict]:
    """Read a JSONL (or JSON array) dataset; every record must have non-empty string `fields`.

    SFT records without "prompt"/"completion" but with a "text" in the prompt format are split on the answer
    tag; {"question", "answer"} records map to prompt/completion. Errors name the file and line."""
    fields = list(fields)
    out: list[dict] = []
    for where, rec in iter_records(path):
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
                    f"{where}: missing or empty field '{f}' (each record needs {', '.join(fields)})"
                )
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: empty dataset (no records)")
    return out


# --- a Trainer stage from start to finish (SFT and the reward model) ------------------------------------------


@dataclass
class Run:
    """What a Trainer stage starts from: its data split, run dir and checkpoint, and base + fresh LoRA."""

    stage: str
    out: Path
    data: str
    options: Any
    train: list[dict]
    valid: list[dict]
    checkpoint: Path | None
    model: Any  # PeftModel
    tokenizer: Any
    writer: MetricsWriter
    callback: Any
    started: float = 0.0

    @property
    def resume_from(self) -> str | None:
        return str(self.checkpoint) if self.checkpoint else None

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Around trainer.train(): the clock, and the metrics file closed however training ends."""
        self.started = time.time()
        try:
            yield
        finally:
            self.writer.close()


def start_run(
    stage: str,
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    opts: Any,
    *,
    fields: Iterable[str],
    task: str,
    eval_data: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    echo: bool = True,
) -> Run:
    """Data (the file's split honoured, or `eval_data`), run dir, and the base model with a fresh LoRA adapter.

    resume: continue from the last complete checkpoint in `out`; overwrite: delete earlier checkpoints first;
    echo: progress lines on stderr."""
    from dnfbot.datasets.splits import train_valid
    from dnfbot.models import add_lora, default_lora_config, load_model

    opts.model = str(model)
    set_threads(opts.threads)
    out = Path(out)
    records = load_records(data, fields, limit=opts.limit)
    if eval_data is not None:
        train, valid = records, load_records(eval_data, fields)
    else:
        split = train_valid(records, opts.valid_fraction)
        train, valid = split.train, split.valid
        if split.note and echo:
            from dnfbot.console import console

            console.print(f"[yellow]{data}: {split.note}")
    ckpt = prepare_output_dir(out, resume=resume, overwrite=overwrite)
    base, tok = load_model(
        model,
        task=task,
        load_in_4bit=opts.load_in_4bit,
        trust_remote_code=opts.trust_remote_code,
        dtype=opts.dtype,
    )
    lora = default_lora_config(
        base.config,
        task,
        r=opts.lora_r,
        alpha=opts.lora_alpha,
        dropout=opts.lora_dropout,
        target_modules=opts.lora_targets,
        modules_to_save=opts.lora_modules_to_save,
    )
    peft_model = add_lora(base, lora, task=task, gradient_checkpointing=opts.gradient_checkpointing)
    writer = MetricsWriter(out / "metrics.jsonl", echo=echo)
    return Run(
        stage, out, str(data), opts, train, valid, ckpt, peft_model, tok, writer, metrics_callback(writer)
    )


def finish_run(run: Run, trainer: Any, result: Any, metrics: dict, *, title: str, usage: str) -> dict:
    """Save the adapter, then write summary.json (with the resolved options as a run config) and the model card.
    Returns the summary (what `--json` prints, without "config")."""
    from dnfbot.models import count_parameters
    from dnfbot.options import as_dict
    from dnfbot.train.options import run_config

    save_final(trainer, run.out)  # adapter (+ head) + tokenizer
    losses = [r["loss"] for r in read_metrics(run.out / "metrics.jsonl") if "loss" in r]
    trainable, total = count_parameters(run.model)
    opts = run.options
    summary = {
        "stage": run.stage,
        "output_dir": str(run.out),
        "model": opts.model,
        "data": run.data,
        "train_records": len(run.train),
        "valid_records": len(run.valid),
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        # from the name: save_total_limit may have deleted the checkpoint the run resumed from by now
        "resumed_from_step": int(run.checkpoint.name.rsplit("-", 1)[1]) if run.checkpoint else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        **metrics,
        "train_runtime_s": round(result.metrics.get("train_runtime") or time.time() - run.started, 2),
        "trainable_params": trainable,
        "total_params": total,
        "load_in_4bit": opts.load_in_4bit,
        "recipe": getattr(opts, "recipe", None),  # what the model's dnfbot_recipe.json set (train/options.py)
        "config": run_config(run.stage, opts),
    }
    if is_main_process():
        write_summary(run.out, summary)
        card_options = {k: v for k, v in as_dict(opts).items() if k != "extra"}
        write_model_card(run.out, title=title, summary=summary, options=card_options, usage=usage)
    return {k: v for k, v in summary.items() if k != "config"}


# --- metrics ---------------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """False on the other ranks of a multi-process launch (`accelerate launch` / torchrun set RANK): only rank 0
    writes a run's files and progress lines, while every rank trains."""
    return os.environ.get("RANK", "0") == "0"


class Trackers:
    """The loggers beside metrics.jsonl that `report_to` names (as the Trainer stages' report_to): TensorBoard
    event files in RUN/tensorboard (torch's writer, or tensorboardX), a Weights & Biases run (WANDB_* from the
    environment: project, mode, API key — never from a file)."""

    def __init__(self, report_to: list[str] | str | None, run_dir: Path):
        from dnfbot.train.options import report_to_names

        names = report_to_names(report_to)
        self._tb, self._wandb = None, None
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                try:
                    from tensorboardX import SummaryWriter
                except ImportError:
                    raise InputError(
                        "report_to tensorboard: install tensorboard or tensorboardX (pip install tensorboardX)"
                    ) from None
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in names:
            try:
                import wandb
            except ImportError:
                raise InputError("report_to wandb: pip install wandb (and set WANDB_API_KEY)") from None
            self._wandb = wandb.init(dir=str(run_dir), name=run_dir.name, reinit=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"train/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class MetricsWriter:
    """Append-only metrics JSONL plus one human progress line per record on stderr (rank 0 only), and the
    trackers `report_to` names (TensorBoard, W&B).

    `log(step, **values)` adds {"step", "time", **values}; with `total_steps` known it also reports an ETA."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        total_steps: int | None = None,
        echo: bool = True,
        report_to: list[str] | str | None = None,
    ):
        self.path = Path(path)
        self.total_steps = total_steps
        self.main = is_main_process()
        self.echo = echo and self.main
        self._out = JsonlAppender(self.path) if self.main else None
        self._trackers = Trackers(report_to, self.path.parent) if self.main else None
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
        if self._out is not None:
            self._out.write(rec)
        if self._trackers is not None:
            self._trackers.log(step, {k: v for k, v in rec.items() if k not in ("step", "time", "eta_s")})
        if self.echo:
            self._print(rec)
        return rec

    def event(self, name: str, **values: Any) -> None:
        if self._out is not None:
            self._out.write({"event": name, "time": round(time.time(), 3), **values})

    def _print(self, rec: dict) -> None:
        from dnfbot.console import console

        parts = [f"step {rec['step']}" + (f"/{self.total_steps}" if self.total_steps else "")]
        for k in ("loss", "eval_loss", "eval_accuracy", "accuracy", "reward", "kl", "lr", "tokens_per_s"):
            if k in rec:
                v = rec[k]
                parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        if "eta_s" in rec:
            parts.append(f"ETA {_fmt_secs(rec['eta_s'])}")
        console.print("  ".join(parts), highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
        if self._trackers is not None:
            self._trackers.close()


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
    # DPO's implicit reward (train/dpo.py)
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
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

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            # the last step is always logged, so that last_loss is the end of training even when max_steps is
            # not a multiple of logging_steps (8 steps, logging every 10: first_loss would be last_loss)
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True
            return control

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
    each stage adds its own keys; `opts.extra` is merged in by trl_trainer."""
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
        report_to=opts.report_to,
        disable_tqdm=True,
        # several processes on a machine without a GPU (torchrun, `accelerate launch --multi_gpu`): DDP over gloo;
        # without it each process would train alone on its own shard
        use_cpu=not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )


def trl_trainer(
    trainer_cls: Any,
    config_cls: Any,
    model: Any,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    out: str | os.PathLike,
    opts: Any,
    callbacks: list | tuple = (),
    trainer_kwargs: dict | None = None,
    **config: Any,
) -> Any:
    """A TRL trainer (SFT, reward, DPO) with our options and the stage's own config keys, quiet on stdout.
    trainer_kwargs: more arguments of the trainer itself (DPO's peft_config)."""
    args = {**training_args(opts, out, has_eval=eval_ds is not None), **config}
    # `extra` holds only keys dnfbot has no option for: one it sets itself would be silently fought over
    taken = sorted(set(opts.extra) & set(args))
    if taken:
        raise InputError(
            f"extra: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by dnfbot's own options; "
            "use those (e.g. report_to: tensorboard) instead of extra"
        )
    args = config_cls(**args, **opts.extra)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        **(trainer_kwargs or {}),
    )
    quiet_trainer(trainer)
    return trainer


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
