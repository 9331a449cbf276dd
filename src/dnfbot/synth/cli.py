"""Verbs: `dnfbot synth qa` and `dnfbot bench synth`."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out

JsonOpt = typer.Option(False, "--json", help="print one JSON summary on stdout")


def _print_summary(s: dict) -> None:
    r = s["retries"]
    out.print(
        f"[green]synth qa ({s['backend']})[/]: {s['records']} records, {s['rejects']} rejects "
        f"({s['already_done']} already done, {s['records_total']} records in {s['out']}) in {s['seconds']:.1f}s"
    )
    if s["rejects"]:
        out.print(f"rejects (with reasons): {s['rejects_out']}")
    if s["backend"] != "extractive":
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


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @groups["synth"].command("qa")
    def synth_qa(
        out_path: Path = typer.Option(
            ..., "--out", help="output JSONL (appended; re-runs skip finished passages)"
        ),
        corpus: list[Path] = typer.Option(None, "--corpus", help="guide JSON, JSONL or folder; repeatable"),
        backend: str = typer.Option(
            "openai", "--backend", help="openai (any OpenAI-compatible server) | extractive (offline)"
        ),
        model: str = typer.Option(
            "gpt-3.5-turbo", "--model", help="model for passages that fit --context-limit"
        ),
        long_model: str = typer.Option(
            "gpt-4-1106-preview", "--long-model", help="model for longer passages ('' = always --model)"
        ),
        context_limit: int = typer.Option(
            4096, "--context-limit", help="tokens --model accepts (prompt estimate + --max-tokens)"
        ),
        max_tokens: int = typer.Option(1024, "--max-tokens", help="reply budget per request"),
        temperature: float = typer.Option(0.7, "--temperature"),
        base_url: str = typer.Option(
            None,
            "--base-url",
            help="server URL (else OPENAI_BASE_URL, else api.openai.com); key from OPENAI_API_KEY",
        ),
        template: Path = typer.Option(
            None, "--template", help="prompt template file (default: the packaged synth_qa.txt)"
        ),
        max_concurrency: int = typer.Option(8, "--max-concurrency", help="requests in flight"),
        max_retries: int = typer.Option(
            6, "--max-retries", help="retries per request on 429/5xx/timeouts/connection errors"
        ),
        max_invalid_retries: int = typer.Option(
            2, "--max-invalid-retries", help="new requests for a reply that fails validation"
        ),
        timeout: float = typer.Option(120.0, "--timeout", help="seconds per request"),
        backoff: float = typer.Option(
            1.0, "--backoff", help="base backoff in seconds (doubles per retry, with jitter)"
        ),
        max_failures: int = typer.Option(
            10, "--max-failures", help="stop after this many passages in a row fail on the server"
        ),
        limit: int = typer.Option(None, "--limit", help="only the first N passages"),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="print the first prompt and a cost estimate; send nothing"
        ),
        retry_rejects: bool = typer.Option(
            False, "--retry-rejects", help="also redo passages rejected for their content"
        ),
        prices: Path = typer.Option(
            None, "--prices", help="price table YAML (default: packaged + $DNFBOT_HOME/prices.yaml)"
        ),
        chunk_size: int = typer.Option(
            None, "--chunk-size", help="characters per passage (default: config, 3000)"
        ),
        chunk_overlap: int = typer.Option(None, "--chunk-overlap", help="(default: config, 250)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
        config: Path = typer.Option(None, "--config", help="YAML settings file"),
        json_out: bool = JsonOpt,
    ):
        """One question + long/medium/short answers per passage, from an LLM or offline (resumable)."""
        from dnfbot.config import load_settings
        from dnfbot.errors import InputError
        from dnfbot.synth.client import RetryPolicy
        from dnfbot.synth.job import SynthOptions, run_synth
        from dnfbot.synth.job import dry_run as do_dry_run

        settings = load_settings(config)
        paths = [str(p) for p in corpus] if corpus else settings.corpus
        for name, v in (
            ("--max-tokens", max_tokens),
            ("--context-limit", context_limit),
            ("--max-failures", max_failures),
        ):
            if v < 1:
                raise InputError(f"{name} must be at least 1")
        if timeout <= 0 or backoff < 0 or max_retries < 0 or max_invalid_retries < 0:
            raise InputError(
                "--timeout must be positive; --backoff, --max-retries, --max-invalid-retries >= 0"
            )
        opts = SynthOptions(
            out=out_path,
            backend=backend,
            model=model,
            long_model=long_model or None,
            context_limit=context_limit,
            max_tokens=max_tokens,
            temperature=temperature,
            template=template,
            base_url=base_url,
            max_concurrency=max_concurrency,
            policy=RetryPolicy(max_retries=max_retries, backoff=backoff, timeout=timeout),
            max_invalid_retries=max_invalid_retries,
            max_failures=max_failures,
            limit=limit,
            retry_rejects=retry_rejects,
            prices=prices,
            chunk_size=chunk_size or settings.chunk.size,
            chunk_overlap=settings.chunk.overlap if chunk_overlap is None else chunk_overlap,
            show_progress=progress,
        )
        if dry_run:
            d = do_dry_run(opts, paths)
            emit_json(d) if json_out else _print_dry_run(d)
            return
        s = run_synth(opts, paths)
        emit_json(s) if json_out else _print_summary(s)

    @groups["bench"].command("synth")
    def bench_synth(
        corpus: list[Path] = typer.Option(None, "--corpus", help="default: the configured corpus"),
        passages: int = typer.Option(1000, "--passages", help="passages sent to the local fake server"),
        latency_ms: float = typer.Option(20.0, "--latency-ms", help="simulated server latency"),
        max_concurrency: int = typer.Option(32, "--max-concurrency"),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        config: Path = typer.Option(None, "--config", help="YAML settings file"),
        json_out: bool = JsonOpt,
    ):
        """Throughput against a local fake server (20 ms latency) and the extractive back end over the corpus."""
        from dnfbot.config import load_settings
        from dnfbot.synth.bench import run_bench

        settings = load_settings(config)
        paths = [str(p) for p in corpus] if corpus else settings.corpus
        with console.status("benchmarking synth…"):
            result = run_bench(
                paths, passages=passages, latency_ms=latency_ms, concurrency=max_concurrency, write=write
            )
        emit_json(result) if json_out else out.print(result["markdown"])
