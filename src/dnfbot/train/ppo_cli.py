"""CLI verbs of RLHF: `train ppo` (PPO, or --algo grpo|rloo through TRL), `report rlhf`, `bench ppo`.

No torch at import time: heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out

JsonOpt = typer.Option(False, "--json", help="print one JSON summary on stdout")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    train, report, bench = groups["train"], groups["report"], groups["bench"]

    @train.command("ppo")
    def train_ppo(
        model: str = typer.Option(..., "--model", help="base model: local path or hub id"),
        prompts: Path = typer.Option(..., "--prompts", help='prompts: JSONL of {"prompt"} (or a JSON list)'),
        out_dir: Path = typer.Option(..., "--out", help="run directory (re-run the same command to resume)"),
        sft_adapter: Path = typer.Option(
            None,
            "--sft-adapter",
            help="SFT LoRA adapter: the policy starts from it, a frozen copy is the reference",
        ),
        reward_adapter: Path = typer.Option(
            None,
            "--reward-adapter",
            help="reward-model LoRA adapter (from `dnfbot train rm`) on the same base",
        ),
        reward_model: str = typer.Option(
            None, "--reward-model", help="a different reward-model base (loaded separately; default: --model)"
        ),
        algo: str = typer.Option("ppo", "--algo", help="ppo | grpo | rloo (grpo/rloo through TRL)"),
        config: Path = typer.Option(None, "--config", help="YAML of PPO settings (a `ppo:` section or flat)"),
        steps: int = typer.Option(None, "--steps", "--max-steps", help="PPO iterations (rollout batches)"),
        batch_size: int = typer.Option(None, "--batch-size", help="prompts per rollout"),
        mini_batch_size: int = typer.Option(None, "--mini-batch-size", help="episodes per optimizer step"),
        micro_batch_size: int = typer.Option(
            None, "--micro-batch-size", help="episodes per forward/backward"
        ),
        ppo_epochs: int = typer.Option(None, "--ppo-epochs"),
        lr: float = typer.Option(None, "--lr"),
        kl_coef: float = typer.Option(
            None, "--kl-coef", help="KL penalty coefficient (initial, if adaptive)"
        ),
        adaptive_kl: bool = typer.Option(None, "--adaptive-kl/--fixed-kl", help="adaptive KL controller"),
        target_kl: float = typer.Option(None, "--target-kl", help="nats per response, for --adaptive-kl"),
        temperature: float = typer.Option(None, "--temperature"),
        top_p: float = typer.Option(None, "--top-p"),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens"),
        max_prompt_tokens: int = typer.Option(None, "--max-prompt-tokens", help="longer prompts are skipped"),
        eval_prompts: int = typer.Option(None, "--eval-prompts", help="held-out prompts scored before/after"),
        save_every: int = typer.Option(None, "--save-every", help="checkpoint every N steps"),
        seed: int = typer.Option(None, "--seed"),
        gradient_checkpointing: bool = typer.Option(
            None, "--gradient-checkpointing/--no-gradient-checkpointing"
        ),
        group_size: int = typer.Option(4, "--group-size", help="grpo/rloo: responses per prompt"),
        load_in_4bit: bool = typer.Option(False, "--4bit/--no-4bit", help="load the base in 4-bit (QLoRA)"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the last checkpoint"),
        limit: int = typer.Option(None, "--limit", help="use only the first N prompts"),
        threads: int = typer.Option(None, "--threads", help="CPU threads for torch"),
        json_out: bool = JsonOpt,
    ):
        """RLHF: train the SFT policy against the reward model (PPO; or GRPO/RLOO via TRL)."""
        from dnfbot.errors import InputError

        # checked before torch is imported: a typo costs no start-up time
        if algo not in ("ppo", "grpo", "rloo"):
            raise InputError(f"unknown --algo '{algo}' (choose ppo, grpo or rloo)")
        if reward_adapter is None and reward_model is None:
            raise InputError("train ppo: give --reward-adapter (and/or --reward-model)")

        from dnfbot.train.common import set_threads
        from dnfbot.train.ppo import load_ppo_config, run_ppo

        set_threads(threads)
        cfg = load_ppo_config(
            config,
            steps=steps,
            batch_size=batch_size,
            mini_batch_size=mini_batch_size,
            micro_batch_size=micro_batch_size,
            ppo_epochs=ppo_epochs,
            lr=lr,
            kl_coef=kl_coef,
            adaptive_kl=adaptive_kl,
            target_kl=target_kl,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            eval_prompts=eval_prompts,
            save_every=save_every,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
        )
        common = dict(
            model=model,
            prompts=prompts,
            out_dir=out_dir,
            sft_adapter=sft_adapter,
            reward_adapter=reward_adapter,
            reward_model=reward_model,
            cfg=cfg,
            load_in_4bit=load_in_4bit,
            resume=resume,
            limit=limit,
            show_progress=True,
        )
        if algo == "ppo":
            summary = run_ppo(**common)
        else:
            from dnfbot.train.trl_rl import run_trl_rl

            summary = run_trl_rl(algo, group_size=group_size, **common)
        if json_out:
            emit_json(summary)
            return
        console.print(
            f"[bold]{algo}[/] {summary['steps']} steps -> {summary['output_dir']}\n"
            f"  held-out reward {summary['reward_before']:+.3f} -> {summary['reward_after']:+.3f}, "
            f"mean KL {summary['mean_kl']:.3f} nats/response\n"
            f"  reference frozen: {summary['reference_frozen']}, shares the base weights: "
            f"{summary['reference_shares_base']}\n"
            f"  report: dnfbot report rlhf --run {summary['output_dir']}",
            highlight=False,
        )

    @report.command("rlhf")
    def report_rlhf(
        run: Path = typer.Option(..., "--run", help="run directory of `dnfbot train ppo`"),
        output: Path = typer.Option(None, "--out", help="Markdown file (default: RUN/report.md)"),
        samples: int = typer.Option(8, "--samples", help="sample prompts in the table"),
        json_out: bool = JsonOpt,
    ):
        """Before/after table, mean reward and KL, PNG curves of reward, KL and response length."""
        from dnfbot.train.rlhf_report import build_report

        result = build_report(run, output, samples=samples)
        if json_out:
            emit_json(result)
        else:
            out.print(Path(result["report"]).read_text(encoding="utf-8"), markup=False, highlight=False)
            console.print(f"written: {result['report']} ({len(result['plots'])} plots)")

    @bench.command("ppo")
    def bench_ppo(
        model: str = typer.Option(
            None, "--model", help="base model; default: a random-init one (--arch/--size)"
        ),
        sft_adapter: Path = typer.Option(None, "--sft-adapter", help="default: a fresh LoRA adapter"),
        reward_adapter: Path = typer.Option(
            None, "--reward-adapter", help="default: a fresh SEQ_CLS adapter"
        ),
        arch: str = typer.Option("gpt-neox", "--arch", help="gpt-neox | llama (random-init model)"),
        size: str = typer.Option("small", "--size", help="tiny | small | 1.3b | 12.8b | 10.8b (random-init)"),
        tokenizer: Path = typer.Option(
            Path("../shared/tokenizers/polyglot-ko"), "--tokenizer", help="tokenizer of the random-init model"
        ),
        batch_size: int = typer.Option(
            8, "--batch-size", help="sequences per step (SFT batch = PPO rollout)"
        ),
        prompt_tokens: int = typer.Option(64, "--prompt-tokens"),
        new_tokens: int = typer.Option(64, "--new-tokens", help="response tokens (SFT: answer tokens)"),
        load_in_4bit: bool = typer.Option(False, "--4bit/--no-4bit"),
        gradient_checkpointing: bool = typer.Option(
            False, "--gradient-checkpointing/--no-gradient-checkpointing"
        ),
        naive: bool = typer.Option(True, "--naive/--no-naive", help="also measure three full model copies"),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        bench_file: Path = typer.Option(Path("docs/benchmarks.md"), "--bench-file"),
        json_out: bool = JsonOpt,
    ):
        """Peak memory of a PPO step vs an SFT step (and vs three full copies), tokens/s."""
        from dnfbot.train.ppo_bench import run_bench

        result = run_bench(
            model=model,
            sft_adapter=sft_adapter,
            reward_adapter=reward_adapter,
            arch=arch,
            size=size,
            tokenizer=tokenizer,
            batch_size=batch_size,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            load_in_4bit=load_in_4bit,
            gradient_checkpointing=gradient_checkpointing,
            naive=naive,
            write=write,
            bench_file=bench_file,
        )
        if json_out:
            emit_json(result)
        else:
            out.print(result["markdown"], markup=False, highlight=False)
