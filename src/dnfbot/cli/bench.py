"""`dnfbot bench NAME`: one verb per benchmark of dnfbot.bench.BENCHMARKS, its flags from the benchmark's options."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.bench import BENCHMARKS, benchmark
from dnfbot.bench.report import DEFAULT_PATH
from dnfbot.cli.options import JSON, show, with_options

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
