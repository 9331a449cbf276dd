"""`dnfbot synth qa` (its benchmark: `dnfbot bench synth`)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import CONFIG, CORPUS, JSON, pick, show, with_options
from dnfbot.synth.client import RetryPolicy
from dnfbot.synth.job import SynthOptions

synth = typer.Typer(no_args_is_help=True)


@synth.command("qa")
@with_options(SynthOptions, RetryPolicy)
def synth_qa(
    corpus: list[Path] = CORPUS,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="print the first prompt and a cost estimate; send nothing"
    ),
    config: Path = CONFIG,
    json_out: bool = JSON,
    options: dict = None,
):
    """One question + long/medium/short answers per passage, from an LLM or offline (resumable)."""
    from dnfbot.config import load_settings
    from dnfbot.options import build
    from dnfbot.synth.job import dry_run as plan_only
    from dnfbot.synth.job import run_synth

    settings = load_settings(config)
    paths = settings.corpus_paths(corpus)
    defaults = {
        "chunk_size": settings.chunk.size,
        "chunk_overlap": settings.chunk.overlap,
    }  # cut as the index is
    policy = build(RetryPolicy, pick(options, RetryPolicy), "flags")
    opts = build(SynthOptions, {**defaults, **pick(options, SynthOptions), "policy": policy}, "flags")
    if dry_run:
        show(plan_only(opts, paths), json_out, _print_dry_run)
    else:
        show(run_synth(opts, paths), json_out, _print_summary)


def _print_summary(s: dict) -> None:
    from dnfbot.console import out

    r = s["retries"]
    out.print(
        f"[green]synth qa ({s['backend']})[/]: {s['records']} records, {s['rejects']} rejects "
        f"({s['already_done']} already done, {s['records_total']} records in {s['out']}) in {s['seconds']:.1f}s"
    )
    if s["rejects"]:
        out.print(f"rejects (with reasons): {s['rejects_out']}")
    if s["backend"] == "extractive":
        return
    out.print(
        f"retries: {r['total']} (429: {r['http_429']}, 5xx: {r['http_5xx']}, timeout: {r['timeout']}, "
        f"connection: {r['connection']}, invalid reply: {r['invalid_reply']}); requests: {s['requests']}"
    )
    cost = (
        "unknown (no price for " + ", ".join(s["unpriced_models"]) + ")"
        if s["cost_usd"] is None
        else f"${s['cost_usd']:.4f}"
    )
    out.print(
        f"tokens: {s['prompt_tokens']} prompt + {s['completion_tokens']} completion; estimated cost {cost}"
    )
    for name, m in s["models"].items():
        out.print(
            f"  {name}: {m['passages']} passages, {m['prompt_tokens']} + {m['completion_tokens']} tokens"
        )


def _print_dry_run(d: dict) -> None:
    from dnfbot.console import out

    if d["first_prompt"]:
        for m in d["first_prompt"]:
            out.rule(f"[bold]{m['role']}")
            out.print(m["content"], markup=False, highlight=False)
        out.rule()
    elif d["first_passage"]:
        out.print(f"first passage: {d['first_passage']['chunk_id']} {d['first_passage']['subject']}")
    out.print(f"{d['passages']} passages ({d['already_done']} already done, {d['to_do']} to do)")
    for name, m in d["models"].items():
        cost = "no price listed" if m["cost_usd_max"] is None else f"≤ ${m['cost_usd_max']:.4f}"
        out.print(
            f"  {name}: {m['passages']} passages, ~{m['prompt_tokens_est']} prompt tokens (offline estimate) "
            f"+ ≤ {m['completion_tokens_max']} completion tokens → {cost}"
        )
    total = "unknown" if d["cost_usd_max"] is None else f"${d['cost_usd_max']:.4f}"
    out.print(f"estimated cost (upper bound, replies at --max-tokens): {total}. Nothing was sent.")
