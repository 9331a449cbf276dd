"""Verbs of the training stages I: `model init-tiny`, `train sft|merge|rm`, `reward score|train`, `generate`,
`plot metrics`, `bench train` (alias `bench sft`).

No torch at import time: heavy imports happen inside the commands. Every verb takes `--json` (one JSON object on
stdout); progress and human output go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out

JsonOpt = typer.Option(False, "--json", help="print one JSON summary on stdout")


def _split_list(value: str | None) -> list[str] | str | None:
    if value is None:
        return None
    if value == "all-linear":
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def _options(cls: type, config: Path | None, stage: str, overrides: dict):
    from dnfbot.train.common import flatten_config, load_yaml_config, merge_options

    flat = flatten_config(load_yaml_config(config), stage, path=config) if config else {}
    return merge_options(cls, flat, overrides, path=config)


def _need_model(model: str | None, opts_model: str | None, config: Path | None) -> str:
    from dnfbot.errors import InputError

    m = model or opts_model
    if not m:
        raise InputError(
            "give --model (a local model directory or hub id)"
            + (f" or 'model:' in {config}" if config else "")
        )
    return m


def _print_run(s: dict) -> None:
    metric = (
        f"eval_loss {s['eval_loss']:.4f}"
        if s.get("eval_loss") is not None
        else f"valid accuracy {s['valid_accuracy']:.3f}"
        if s.get("valid_accuracy") is not None
        else "no validation set"
    )
    first, last = s.get("first_loss"), s.get("last_loss")
    loss = f"loss {first:.4f} → {last:.4f}" if first is not None and last is not None else "no steps logged"
    out.print(f"[green]{s['stage']}[/]: {s['steps']} steps, {loss}, {metric} → {s['output_dir']}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    model_g, train, reward, plot, bench = (groups[k] for k in ("model", "train", "reward", "plot", "bench"))

    @model_g.command("init-tiny")
    def model_init_tiny(
        arch: str = typer.Option("gpt-neox", "--arch", help="gpt-neox (polyglot-ko) | llama (EEVE / SOLAR)"),
        tokenizer: Path = typer.Option(
            ..., "--tokenizer", help="tokenizer directory (e.g. shared/tokenizers/polyglot-ko)"
        ),
        out_dir: Path = typer.Option(..., "--out", help="output model directory"),
        size: str = typer.Option(
            "tiny", "--size", help="tiny (~4M) | small (~45M) | 1.3b | 12.8b | 10.8b (GPU benchmarks)"
        ),
        seed: int = typer.Option(0, "--seed"),
        json_out: bool = JsonOpt,
    ):
        """Random-init model of the real architecture with the real tokenizer (offline tests and demos)."""
        from dnfbot.models import count_parameters, init_tiny, load_model

        path = init_tiny(arch, tokenizer, out_dir, size=size, seed=seed)
        m, tok = load_model(path)
        _, total = count_parameters(m)
        res = {"output_dir": str(path), "arch": arch, "size": size, "params": total, "vocab": len(tok)}
        if json_out:
            emit_json(res)
        else:
            out.print(f"[green]init-tiny[/]: {arch}/{size}, {total:,} parameters → {path}")

    @train.command("sft")
    def train_sft(
        model: str = typer.Option(None, "--model", help="base model: local path or hub id"),
        data: Path = typer.Option(
            ..., "--data", help='JSONL of {"prompt","completion"} (or {"question","answer"})'
        ),
        out_dir: Path = typer.Option(..., "--out", help="run directory (re-run the same command to resume)"),
        config: Path = typer.Option(
            None, "--config", help="YAML run config (configs/polyglot-ko-1.3b.yaml ...)"
        ),
        eval_data: Path = typer.Option(None, "--eval-data", help="validation JSONL (default: a hash split)"),
        load_in_4bit: bool = typer.Option(None, "--4bit/--no-4bit", help="QLoRA: 4-bit nf4 base"),
        max_steps: int = typer.Option(None, "--max-steps", help="stop after N optimizer steps (> 0)"),
        epochs: float = typer.Option(None, "--epochs"),
        limit: int = typer.Option(None, "--limit", help="use only the first N records"),
        lr: float = typer.Option(None, "--lr"),
        batch_size: int = typer.Option(None, "--batch-size"),
        grad_accum: int = typer.Option(None, "--grad-accum"),
        max_length: int = typer.Option(None, "--max-length"),
        packing: bool = typer.Option(None, "--packing/--no-packing", help="pack examples into full rows"),
        gradient_checkpointing: bool = typer.Option(
            None, "--gradient-checkpointing/--no-gradient-checkpointing"
        ),
        lora_r: int = typer.Option(None, "--lora-r"),
        lora_targets: str = typer.Option(
            None, "--lora-targets", help="comma list or all-linear (default: by arch)"
        ),
        save_steps: int = typer.Option(None, "--save-steps"),
        logging_steps: int = typer.Option(None, "--logging-steps"),
        seed: int = typer.Option(None, "--seed"),
        threads: int = typer.Option(None, "--threads", help="CPU threads for torch"),
        resume: bool = typer.Option(
            True, "--resume/--no-resume", help="continue from the last checkpoint in --out"
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="delete earlier checkpoints in --out first"
        ),
        json_out: bool = JsonOpt,
    ):
        """Supervised fine-tuning with (Q)LoRA (TRL SFTTrainer); loss on the answer tokens only."""
        from dnfbot.train.sft import SFTOptions, run_sft

        opts = _options(
            SFTOptions,
            config,
            "sft",
            dict(
                load_in_4bit=load_in_4bit,
                max_steps=max_steps,
                epochs=epochs,
                limit=limit,
                lr=lr,
                batch_size=batch_size,
                grad_accum=grad_accum,
                max_length=max_length,
                packing=packing,
                gradient_checkpointing=gradient_checkpointing,
                lora_r=lora_r,
                lora_targets=_split_list(lora_targets),
                save_steps=save_steps,
                logging_steps=logging_steps,
                seed=seed,
                threads=threads,
            ),
        )
        m = _need_model(model, opts.model, config)
        s = run_sft(
            m,
            data,
            out_dir,
            options=opts,
            eval_data=eval_data,
            resume=resume and not overwrite,
            overwrite=overwrite,
        )
        if json_out:
            emit_json({k: v for k, v in s.items() if k != "options"})
        else:
            _print_run(s)

    @train.command("merge")
    def train_merge(
        model: str = typer.Option(..., "--model", help="base model: local path or hub id"),
        adapter: Path = typer.Option(..., "--adapter", help="LoRA adapter directory (from train sft)"),
        out_dir: Path = typer.Option(..., "--out", help="new, empty directory for the merged model"),
        dtype: str = typer.Option(
            None, "--dtype", help="float32 | bfloat16 | float16 (default float32 on CPU)"
        ),
        json_out: bool = JsonOpt,
    ):
        """Fold a LoRA adapter into its base weights; saves a plain safetensors model + tokenizer."""
        from dnfbot.train.sft import merge_adapter

        res = merge_adapter(model, adapter, out_dir, dtype=dtype)
        if json_out:
            emit_json(res)
        else:
            out.print(f"[green]merged[/]: {res['params']:,} parameters → {res['output_dir']}")

    def _train_rm(
        model,
        data,
        out_dir,
        config,
        eval_data,
        load_in_4bit,
        max_steps,
        epochs,
        limit,
        lr,
        batch_size,
        grad_accum,
        max_length,
        lora_r,
        lora_targets,
        save_steps,
        logging_steps,
        seed,
        threads,
        resume,
        overwrite,
        json_out,
    ):
        from dnfbot.train.reward import RMOptions, run_reward

        opts = _options(
            RMOptions,
            config,
            "rm",
            dict(
                load_in_4bit=load_in_4bit,
                max_steps=max_steps,
                epochs=epochs,
                limit=limit,
                lr=lr,
                batch_size=batch_size,
                grad_accum=grad_accum,
                max_length=max_length,
                lora_r=lora_r,
                lora_targets=_split_list(lora_targets),
                save_steps=save_steps,
                logging_steps=logging_steps,
                seed=seed,
                threads=threads,
            ),
        )
        m = _need_model(model, opts.model, config)
        s = run_reward(
            m,
            data,
            out_dir,
            options=opts,
            eval_data=eval_data,
            resume=resume and not overwrite,
            overwrite=overwrite,
        )
        if json_out:
            emit_json({k: v for k, v in s.items() if k != "options"})
        else:
            _print_run(s)

    def rm_command(
        model: str = typer.Option(None, "--model", help="base model: local path or hub id"),
        data: Path = typer.Option(..., "--data", help='JSONL of {"prompt","chosen","rejected"}'),
        out_dir: Path = typer.Option(..., "--out", help="run directory (re-run the same command to resume)"),
        config: Path = typer.Option(None, "--config", help="YAML run config (an `rm:` section)"),
        eval_data: Path = typer.Option(None, "--eval-data", help="validation pairs (default: a hash split)"),
        load_in_4bit: bool = typer.Option(None, "--4bit/--no-4bit"),
        max_steps: int = typer.Option(None, "--max-steps"),
        epochs: float = typer.Option(None, "--epochs"),
        limit: int = typer.Option(None, "--limit"),
        lr: float = typer.Option(None, "--lr"),
        batch_size: int = typer.Option(None, "--batch-size", help="pairs per step"),
        grad_accum: int = typer.Option(None, "--grad-accum"),
        max_length: int = typer.Option(None, "--max-length", help="longer pairs are dropped"),
        lora_r: int = typer.Option(None, "--lora-r"),
        lora_targets: str = typer.Option(None, "--lora-targets"),
        save_steps: int = typer.Option(None, "--save-steps"),
        logging_steps: int = typer.Option(None, "--logging-steps"),
        seed: int = typer.Option(None, "--seed"),
        threads: int = typer.Option(None, "--threads"),
        resume: bool = typer.Option(True, "--resume/--no-resume"),
        overwrite: bool = typer.Option(False, "--overwrite"),
        json_out: bool = JsonOpt,
    ):
        """Reward model: 1-label classifier + LoRA on ranked pairs (TRL RewardTrainer); reports pair accuracy."""
        _train_rm(
            model,
            data,
            out_dir,
            config,
            eval_data,
            load_in_4bit,
            max_steps,
            epochs,
            limit,
            lr,
            batch_size,
            grad_accum,
            max_length,
            lora_r,
            lora_targets,
            save_steps,
            logging_steps,
            seed,
            threads,
            resume,
            overwrite,
            json_out,
        )

    train.command("rm")(rm_command)
    reward.command("train")(rm_command)

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
        json_out: bool = JsonOpt,
    ):
        """Score (prompt, response) pairs with a reward model; with chosen/rejected, report pairwise accuracy."""
        from dnfbot.io import write_jsonl
        from dnfbot.models import load_model
        from dnfbot.train.common import load_records
        from dnfbot.train.reward import PAIR_FIELDS, pairwise_accuracy, score_pairs

        pairs = "chosen" in load_records(data, ("prompt",), limit=1)[0]  # pairs, or single responses
        records = load_records(data, PAIR_FIELDS if pairs else ("prompt", "response"))
        m, tok = load_model(model, task="seq-cls", adapter=adapter, load_in_4bit=load_in_4bit)
        res: dict = {"model": model, "adapter": str(adapter) if adapter else None, "records": len(records)}
        if pairs:
            acc = pairwise_accuracy(m, tok, records, batch_size=batch_size)
            scored = [
                {**r, "chosen_score": c, "rejected_score": s}
                for r, c, s in zip(records, acc["chosen"], acc["rejected"], strict=True)
            ]
            res.update(accuracy=acc["accuracy"], margin=acc["margin"])
            all_scores = acc["chosen"] + acc["rejected"]
        else:
            scores = score_pairs(
                m,
                tok,
                [r["prompt"] for r in records],
                [r["response"] for r in records],
                batch_size=batch_size,
            )
            scored = [{**r, "score": s} for r, s in zip(records, scores, strict=True)]
            all_scores = scores
        res["mean_score"] = sum(all_scores) / len(all_scores)
        if out_file:
            write_jsonl(out_file, scored)
            res["out"] = str(out_file)
        if json_out:
            res["scores"] = [{k: v for k, v in r.items() if k.endswith("score")} for r in scored]
            emit_json(res)
        else:
            for r in scored[:20]:
                vals = "  ".join(f"{k} {v:+.3f}" for k, v in r.items() if k.endswith("score"))
                out.print(f"{vals}  {r['prompt'][:50]!r}", highlight=False)
            if len(scored) > 20:
                out.print(f"… {len(scored) - 20} more (use --out or --json)")
            tail = f", pairwise accuracy {res['accuracy']:.3f}" if pairs else ""
            out.print(f"[green]{len(records)} records[/], mean score {res['mean_score']:+.3f}{tail}")

    @app.command("generate")
    def generate(
        question: str = typer.Argument(..., help="the question (wrapped in '### 질문: …\\n\\n### 답변:')"),
        model: str = typer.Option(None, "--model", help="base model: local path or hub id"),
        adapter: Path = typer.Option(None, "--adapter", help="LoRA adapter directory"),
        config: Path = typer.Option(None, "--config", help="YAML with a `generate:` section (and `model:`)"),
        load_in_4bit: bool = typer.Option(False, "--4bit/--no-4bit"),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="default 256"),
        num_beams: int = typer.Option(
            None, "--num-beams", help="default 3 (beam search answers arrive at once)"
        ),
        no_repeat_ngram_size: int = typer.Option(None, "--no-repeat-ngram-size", help="default 4"),
        sample: bool = typer.Option(
            None, "--sample/--no-sample", help="sample instead of beam/greedy search"
        ),
        temperature: float = typer.Option(None, "--temperature"),
        top_p: float = typer.Option(None, "--top-p", help="default 0.9 (with --sample)"),
        seed: int = typer.Option(None, "--seed"),
        raw: bool = typer.Option(False, "--raw", help="send the text as is, without the 질문/답변 format"),
        json_out: bool = JsonOpt,
    ):
        """Answer one question with a local model (+ LoRA adapter), streaming to the terminal."""
        import sys
        import time

        from dnfbot.errors import InputError
        from dnfbot.generate.hf import DecodeOptions, generate_stream
        from dnfbot.models import load_model
        from dnfbot.train.common import load_yaml_config, merge_options, model_prompt

        cfg = load_yaml_config(config)
        section = dict(cfg.get("generate") or {})
        opts = merge_options(
            DecodeOptions,
            section,
            dict(
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                no_repeat_ngram_size=no_repeat_ngram_size,
                do_sample=sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            ),
            path=config,
        )
        m = model or cfg.get("model")
        if not m:
            raise InputError("give --model (a local model directory or hub id)")
        lm, tok = load_model(m, adapter=adapter, load_in_4bit=load_in_4bit or bool(cfg.get("load_in_4bit")))
        prompt = question if raw else model_prompt(question)
        t0 = time.time()
        pieces = []
        for piece in generate_stream(lm, tok, prompt, opts):
            pieces.append(piece)
            if not json_out:
                sys.stdout.write(piece)
                sys.stdout.flush()
        answer = "".join(pieces)
        if json_out:
            emit_json(
                {
                    "question": question,
                    "answer": answer,
                    "model": m,
                    "adapter": str(adapter) if adapter else None,
                    "seconds": round(time.time() - t0, 3),
                    "options": opts.__dict__,
                }
            )
        else:
            sys.stdout.write("\n")

    @plot.command("metrics")
    def plot_metrics_cmd(
        run_dir: Path = typer.Argument(..., help="a run directory with metrics.jsonl"),
        out_file: Path = typer.Option(None, "--out", help="PNG path (default RUN_DIR/metrics.png)"),
        json_out: bool = JsonOpt,
    ):
        """Loss (and eval / reward) curves of a training run to PNG."""
        from dnfbot.train.plot import plot_metrics

        res = plot_metrics(run_dir, out_file)
        if json_out:
            emit_json(res)
        else:
            out.print(f"[green]plot[/]: {', '.join(res['series'])} → {res['png']}")

    @bench.command("train")
    def bench_train(
        tokenizer: Path = typer.Option(..., "--tokenizer", help="tokenizer directory (polyglot-ko)"),
        corpus: Path = typer.Option(
            None, "--corpus", help="guide corpus JSON for the Q&A data (default: shared)"
        ),
        data: Path = typer.Option(None, "--data", help="SFT JSONL to use instead of the corpus-derived data"),
        arch: str = typer.Option("gpt-neox", "--arch"),
        size: str = typer.Option("tiny", "--size", help="tiny | small | 1.3b | 12.8b (GPU)"),
        records: int = typer.Option(64, "--records", help="examples per run (one epoch)"),
        max_length: int = typer.Option(512, "--max-length"),
        batch_size: int = typer.Option(4, "--batch-size", help="examples per step, unpacked set-up"),
        with_4bit: bool = typer.Option(
            True, "--4bit/--no-4bit", help="also run the packed set-up on a 4-bit base"
        ),
        threads: int = typer.Option(None, "--threads"),
        rounds: int = typer.Option(3, "--rounds", help="interleaved rounds; each set-up keeps its fastest"),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        json_out: bool = JsonOpt,
    ):
        """SFT throughput: packed vs the original padded, unpacked set-up (answer tokens/s, peak memory)."""
        from dnfbot.train.sft_bench import run_bench

        res = run_bench(
            tokenizer,
            corpus=corpus,
            data=data,
            arch=arch,
            size=size,
            records=records,
            max_length=max_length,
            batch_size=batch_size,
            with_4bit=with_4bit,
            threads=threads,
            rounds=rounds,
            write=write,
        )
        if json_out:
            emit_json(res)
        else:
            console.print(res["markdown"])

    bench.command("sft", hidden=True)(bench_train)  # the name for the same benchmark
