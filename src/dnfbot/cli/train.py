"""`dnfbot train sft | rm | dpo | ppo | merge | ranker | embedder | static-embedder` and `dnfbot reward score | train`.

Every hyper-parameter is a field of an option dataclass in train/options.py; the flags are generated from it and
`--config` reads the one run-config schema described there (flags win over the file)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import CONFIG, JSON, RUN_CONFIG, IndexFlags, show, with_options
from dnfbot.train.options import DPOOptions, PPOOptions, RMOptions, SFTOptions

train = typer.Typer(no_args_is_help=True)
reward = typer.Typer(no_args_is_help=True)

OUT = typer.Option(..., "--out", help="run directory (re-run the same command to resume)")
RESUME = typer.Option(True, "--resume/--no-resume", help="continue from the last checkpoint in --out")


def _print_run(s: dict) -> None:
    from dnfbot.console import out

    if s.get("valid_margin_after") is not None:
        metric = (
            f"held-out implicit reward margin {s['valid_margin_before']:+.3f} → {s['valid_margin_after']:+.3f} "
            f"(accuracy {s['valid_accuracy_after']:.3f})"
        )
    elif s.get("eval_loss") is not None:
        metric = f"eval_loss {s['eval_loss']:.4f}"
    elif s.get("valid_accuracy") is not None:
        metric = f"valid accuracy {s['valid_accuracy']:.3f}"
    else:
        metric = "no validation set"
    first, last = s.get("first_loss"), s.get("last_loss")
    loss = f"loss {first:.4f} → {last:.4f}" if first is not None and last is not None else "no steps logged"
    out.print(f"[green]{s['stage']}[/]: {s['steps']} steps, {loss}, {metric} → {s['output_dir']}")


# --- the Trainer stages: SFT and the reward model share one command shape ----------------------------------


STAGES = {
    # stage → (options, data help, one-line help)
    "sft": (
        SFTOptions,
        'JSONL of {"prompt","completion"} (or {"question","answer"})',
        "Supervised fine-tuning with (Q)LoRA (TRL SFTTrainer); loss on the answer tokens only.",
    ),
    "rm": (
        RMOptions,
        'JSONL of {"prompt","chosen","rejected"}',
        "Reward model: 1-label classifier + LoRA on ranked pairs (TRL RewardTrainer); reports pair accuracy.",
    ),
    "dpo": (
        DPOOptions,
        'JSONL of {"prompt","chosen","rejected"} (`dnfbot data rm` pairs)',
        "DPO on ranked pairs with (Q)LoRA (TRL DPOTrainer; reference = the base, adapter disabled); reports the "
        "held-out implicit reward margin before → after.",
    ),
}


def _trainer_command(stage: str):
    cls, data_help, doc = STAGES[stage]

    @with_options(cls)
    def command(
        data: Path = typer.Option(..., "--data", help=data_help),
        out_dir: Path = OUT,
        config: Path = RUN_CONFIG,
        eval_data: Path = typer.Option(
            None, "--eval-data", help="validation file (default: the file's split)"
        ),
        resume: bool = RESUME,
        overwrite: bool = typer.Option(
            False, "--overwrite", help="delete earlier checkpoints in --out first"
        ),
        json_out: bool = JSON,
        options: dict = None,
    ):
        from dnfbot.train.options import load_options, require_model

        opts = load_options(stage, config, options)
        model = require_model(opts, config)
        if stage == "sft":
            from dnfbot.train.sft import run_sft as run
        elif stage == "dpo":
            from dnfbot.train.dpo import run_dpo as run
        else:
            from dnfbot.train.reward import run_reward as run
        summary = run(
            model, data, out_dir, options=opts, eval_data=eval_data, resume=resume and not overwrite,
            overwrite=overwrite,
        )  # fmt: skip
        from dnfbot.train.common import is_main_process

        if is_main_process():  # under `accelerate launch`, one summary for the whole run
            show(summary, json_out, _print_run)

    command.__doc__ = doc
    return command


train.command("sft")(_trainer_command("sft"))
train.command("rm")(_trainer_command("rm"))
train.command("dpo")(_trainer_command("dpo"))
reward.command("train")(_trainer_command("rm"))  # the same verb under the reward group


@train.command("merge")
def train_merge(
    model: str = typer.Option(..., "--model", help="base model: local path or hub id"),
    adapter: Path = typer.Option(..., "--adapter", help="LoRA adapter directory (from train sft)"),
    out_dir: Path = typer.Option(..., "--out", help="new, empty directory for the merged model"),
    dtype: str = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default float32 on CPU)"),
    json_out: bool = JSON,
):
    """Fold a LoRA adapter into its base weights; saves a plain safetensors model + tokenizer."""
    from dnfbot.console import out
    from dnfbot.train.sft import merge_adapter

    show(merge_adapter(model, adapter, out_dir, dtype=dtype), json_out,
         lambda r: out.print(f"[green]merged[/]: {r['params']:,} parameters → {r['output_dir']}"))  # fmt: skip


# --- RLHF ----------------------------------------------------------------------------------------------------


@train.command("ppo")
@with_options(PPOOptions)
def train_ppo(
    prompts: Path = typer.Option(..., "--prompts", help='prompts: JSONL of {"prompt"} (or a JSON list)'),
    out_dir: Path = OUT,
    sft_adapter: Path = typer.Option(
        None,
        "--sft-adapter",
        help="SFT LoRA adapter: the policy starts from it, a frozen copy is the reference",
    ),
    reward_adapter: Path = typer.Option(
        None, "--reward-adapter", help="reward-model LoRA adapter (from `dnfbot train rm`) on the same base"
    ),
    config: Path = RUN_CONFIG,
    resume: bool = RESUME,
    force: bool = typer.Option(
        False, "--force", help="resume even though the options or inputs differ from the run's config.json"
    ),
    json_out: bool = JSON,
    options: dict = None,
):
    """RLHF: train the SFT policy against the reward model (PPO; or GRPO/RLOO via TRL)."""
    from dnfbot.errors import InputError
    from dnfbot.train.options import load_options, require_model

    # checked before torch is imported: a typo costs no start-up time
    opts = load_options("ppo", config, options)
    require_model(opts, config)
    if reward_adapter is None and opts.reward_model is None:
        raise InputError("train ppo: give --reward-adapter (and/or --reward-model)")

    from dnfbot.train.common import set_threads
    from dnfbot.train.rlhf import run_rlhf

    set_threads(opts.threads)
    summary = run_rlhf(
        opts, prompts=prompts, out_dir=out_dir, sft_adapter=sft_adapter, reward_adapter=reward_adapter,
        resume=resume, force=force, show_progress=True,
    )  # fmt: skip
    if summary:  # under `accelerate launch`, rank 0's summary for the whole run (the other ranks return {})
        show(summary, json_out, _print_rlhf)


def _print_rlhf(s: dict) -> None:
    from dnfbot.console import console

    console.print(
        f"[bold]{s['algo']}[/] {s['steps']} steps -> {s['output_dir']}\n"
        f"  held-out reward {s['reward_before']:+.3f} -> {s['reward_after']:+.3f}, "
        f"mean KL {s['mean_kl']:.3f} nats/response\n"
        f"  reference frozen: {s['reference_frozen']}, shares the base weights: {s['reference_shares_base']}\n"
        f"  report: dnfbot report rlhf --run {s['output_dir']}",
        highlight=False,
    )


# --- the embedder (dense retrieval) --------------------------------------------------------------------------


@train.command("ranker")
@with_options(IndexFlags)
def train_ranker(
    queries: list[Path] = typer.Option(
        None, "--queries", help="question sets (default: eval/players.jsonl and eval/dev.jsonl)"
    ),
    out_path: Path = typer.Option(
        None, "--out", help="where to write the model (default: the packaged data/ranker.json)"
    ),
    l2: float = typer.Option(0.001, "--l2", min=0.0, help="pull towards the hand-tuned weights"),
    json_out: bool = JSON,
    options: dict = None,
):
    """Train the answer-sentence ranker on the tune split (seconds, numpy only); report the test split."""
    from importlib import resources

    from dnfbot.console import emit_json, out
    from dnfbot.eval.retrieval import load_devset
    from dnfbot.rag import open_rag
    from dnfbot.train import ranker

    items = [
        it
        for path in (queries or [Path("eval/players.jsonl"), Path("eval/dev.jsonl")])
        for it in load_devset(path)
    ]
    rag = open_rag(**options)
    model = ranker.train(
        rag, [it for it in items if it.split != "test"], [it for it in items if it.split == "test"], l2=l2
    )
    target = out_path or Path(str(resources.files("dnfbot").joinpath("data/ranker.json")))
    ranker.save(model["weights"], target, {"report": model["report"]})
    if json_out:
        emit_json({"out": str(target), **model["report"]})
        return
    r = model["report"]
    out.print(
        f"wrote {target}: top-1 right sentence on the tune split {r['top1_hand_tune']:.3f} (hand) → "
        f"{r['top1_tune']:.3f}; held out {r.get('top1_hand_held_out', 0):.3f} → {r.get('top1_held_out', 0):.3f}"
    )


@train.command("embedder")
def train_embedder(
    model: str = typer.Option(..., "--model", help="sentence-transformers model folder, or e5-small"),
    pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL from `dnfbot data pairs`"),
    out_dir: Path = typer.Option(..., "--out", help="output folder (final model + epoch-N checkpoints)"),
    epochs: int = typer.Option(3, "--epochs", min=1),
    batch_size: int = typer.Option(
        32, "--batch-size", min=2, help="in-batch negatives per question = batch − 1"
    ),
    lr: float = typer.Option(
        2e-5, "--lr", help="2e-5 for pretrained models; ~5e-3 for a random-init tiny one"
    ),
    max_seq_length: int = typer.Option(None, "--max-seq-length"),
    hard_negatives: bool = typer.Option(
        False, "--hard-negatives", help="add one BM25-mined negative per pair"
    ),
    max_pairs: int = typer.Option(None, "--max-pairs", min=2),
    seed: int = typer.Option(0, "--seed"),
    freeze_layers: int = typer.Option(
        0, "--freeze-layers", min=0, help="freeze the embeddings and the lowest N layers (CPU: e5 with 6)"
    ),
    freeze_embeddings: bool = typer.Option(
        False, "--freeze-embeddings", help="freeze the token/position embeddings only"
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="recompute activations in the backward pass (less memory)"
    ),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="stop after N steps (a bounded run)"),
    index_dir: Path = typer.Option(None, "--index-dir", help="BM25 index for --hard-negatives"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch's default)"),
    config: Path = CONFIG,
    json_out: bool = JSON,
):
    """Fine-tune an embedder with multiple-negatives ranking loss (+ optional BM25 hard negatives)."""
    from dnfbot.config import load_settings
    from dnfbot.console import out
    from dnfbot.errors import InputError
    from dnfbot.train.common import set_threads
    from dnfbot.train.embed import EmbedTrainConfig
    from dnfbot.train.embed import train_embedder as run

    set_threads(threads)
    s = load_settings(config)
    if not pairs.exists():
        raise InputError(f"{pairs}: pairs file not found (make one with `dnfbot data pairs`)")
    index = None
    if hard_negatives:
        from dnfbot.retrieval.index import open_index

        index, _ = open_index(s.resolve_index_dir(index_dir), s, refresh=False)
    from dnfbot.retrieval.encoders import model_folder, resolve_prefixes

    # empty prefixes in the settings = the model's own prompts (e5: "query: " / "passage: ")
    prefixes = resolve_prefixes(model, "sentence-transformers", s.dense.query_prefix, s.dense.passage_prefix)
    cfg = EmbedTrainConfig(
        model=model_folder(model, s.home), pairs=str(pairs), out=str(out_dir), epochs=epochs,
        batch_size=batch_size, lr=lr, max_seq_length=max_seq_length, hard_negatives=hard_negatives,
        query_prefix=prefixes[0], passage_prefix=prefixes[1], seed=seed, max_pairs=max_pairs,
        freeze_layers=freeze_layers, freeze_embeddings=freeze_embeddings,
        gradient_checkpointing=gradient_checkpointing, max_steps=max_steps,
    )  # fmt: skip
    show(run(cfg, index=index), json_out, lambda r: out.print(
        f"[green]trained[/] {r['train_pairs']} pairs, {r['steps']} steps ({r['seconds']:.0f}s, "
        f"{r['seconds_per_step']} s/step, {r['trainable_parameters'] / 1e6:.1f}M of "
        f"{r['total_parameters'] / 1e6:.1f}M parameters trained, peak {r['peak_rss_mb']} MB): "
        f"loss {r['first_loss']:.3f} → {r['last_loss']:.3f}; model in {out_dir}"
    ))  # fmt: skip


@train.command("static-embedder")
def train_static_embedder(
    pairs: Path = typer.Option(
        ..., "--pairs", help="pairs JSONL from `dnfbot data pairs` (train split used)"
    ),
    out_dir: Path = typer.Option(..., "--out", help="folder for the static model (use it as dense.model)"),
    dim: int = typer.Option(256, "--dim", min=8),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(128, "--batch-size", min=2),
    lr: float = typer.Option(0.02, "--lr"),
    min_count: int = typer.Option(2, "--min-count", min=1, help="drop features seen fewer times"),
    seed: int = typer.Option(0, "--seed"),
    idf_from_corpus: bool = typer.Option(
        True, "--idf-from-corpus/--idf-from-pairs", help="feature weights from the corpus chunks"
    ),
    config: Path = CONFIG,
    json_out: bool = JSON,
):
    """The in-house fallback: static embeddings (Kiwi morphemes + bigrams) trained from scratch on the pairs."""
    from dnfbot.config import load_settings
    from dnfbot.console import out
    from dnfbot.retrieval.static_embed import train_static

    s = load_settings(config)
    r = train_static(
        pairs, out_dir, dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, min_count=min_count, seed=seed,
        corpus=s.corpus if idf_from_corpus else None, chunk=s.chunk,
    )  # fmt: skip
    show(r, json_out, lambda r: out.print(
        f"[green]trained[/] static embeddings: {r['vocab']} features × {r['dim']}, {r['train_pairs']} pairs, "
        f"{r['steps']} steps in {r['seconds']:.0f}s (loss {r['first_loss']:.3f} → {r['last_loss']:.3f}); "
        f"model in {out_dir} — `dnfbot index build --dense-model {out_dir}`"
    ))  # fmt: skip


# --- scoring with a reward model ----------------------------------------------------------------------------


@reward.command("score")
def reward_score(
    model: str = typer.Option(..., "--model", help="base model: local path or hub id"),
    adapter: Path = typer.Option(None, "--adapter", help="reward LoRA adapter (from train rm)"),
    data: Path = typer.Option(
        ..., "--data", help='JSONL of {"prompt","response"} or {"prompt","chosen","rejected"}'
    ),
    out_file: Path = typer.Option(None, "--out", help="write the records with their scores here (JSONL)"),
    batch_size: int = typer.Option(8, "--batch-size"),
    load_in_4bit: bool = typer.Option(False, "--4bit/--no-4bit"),
    json_out: bool = JSON,
):
    """Score (prompt, response) pairs with a reward model; with chosen/rejected, report pairwise accuracy."""
    from dnfbot.console import emit_json, out
    from dnfbot.train.reward import score_file

    res, scored = score_file(model, adapter, data, out_file, batch_size=batch_size, load_in_4bit=load_in_4bit)
    if json_out:
        res["scores"] = [{k: v for k, v in r.items() if k.endswith("score")} for r in scored]
        emit_json(res)
        return
    for r in scored[:20]:
        vals = "  ".join(f"{k} {v:+.3f}" for k, v in r.items() if k.endswith("score"))
        out.print(f"{vals}  {r['prompt'][:50]!r}", highlight=False)
    if len(scored) > 20:
        out.print(f"… {len(scored) - 20} more (use --out or --json)")
    tail = f", pairwise accuracy {res['accuracy']:.3f}" if "accuracy" in res else ""
    out.print(f"[green]{len(scored)} records[/], mean score {res['mean_score']:+.3f}{tail}")
