"""Benchmarks, beside the code they measure rather than inside it, behind one protocol.

A benchmark is a dataclass whose fields are its options (declared with dnfbot.options.option, so they are also
its `dnfbot bench NAME` flags), with

    section: str          the section of docs/benchmarks.md it owns (bench/report.py rewrites only that one)
    def run(self) -> dict the measurements, with "markdown": the section's text

`run_bench` runs one and records its section. A new benchmark is a module here and one line in BENCHMARKS.
(`bench dense` keeps its own verb and run function for now: bench/dense.py is being reworked with the dense
retrieval back ends.)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from dnfbot.bench.report import DEFAULT_PATH, update_section


class Benchmark(Protocol):
    section: str

    def run(self) -> dict[str, Any]: ...


# name → "module:class"; `dnfbot bench NAME` runs it (flags from the dataclass)
BENCHMARKS = {
    "retrieval": "dnfbot.bench.retrieval:RetrievalBench",
    "synth": "dnfbot.bench.synth:SynthBench",
    "serve": "dnfbot.bench.serve:ServeBench",
    "train": "dnfbot.bench.train:TrainBench",
    "ppo": "dnfbot.bench.ppo:PPOBench",
    "index": "dnfbot.bench.index_scale:IndexScaleBench",
    "feedback": "dnfbot.bench.feedback:FeedbackBench",
}


def benchmark(name: str) -> type:
    module, cls = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def run_bench(bench: Benchmark, *, write: bool = True, path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    """Run `bench`; with `write`, rewrite its section of docs/benchmarks.md (the result then names the file)."""
    result = bench.run()
    if write:
        result["written"] = str(update_section(bench.section, result["markdown"], path))
    return result
