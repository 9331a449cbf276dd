"""`dnfbot bench synth`: job throughput against a local fake server, and the extractive back end's speed.

1. The extractive back end over the whole corpus: the CLI command in a fresh process, wall time from process
   start (imports, corpus loading, chunking, Kiwi model load, synthesis, writing).
2. `synth qa` with the real openai client against the fake OpenAI-compatible server (dnfbot.bench.fake_openai,
   run as a separate process, `latency_ms` per reply) over `passages` passages taken from the corpus
   (cycled, each tagged so that every one is a distinct job key); passages/s over the job, and a check that
   every passage ended up in the output exactly once (0 lost, 0 duplicated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.io import read_jsonl
from dnfbot.options import option


@dataclass
class SynthBench:
    """Throughput against a local fake server (20 ms latency) and the extractive back end over the corpus."""

    section = "synth"
    corpus: list[Path] | None = option(
        None, "guide JSON, JSONL or folder; repeatable (default: the configured corpus)"
    )
    passages: int = option(1000, "passages sent to the local fake server")
    latency_ms: float = option(20.0, "simulated server latency")
    max_concurrency: int = option(32, "requests in flight")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        from dnfbot.config import load_settings

        paths = load_settings(self.config).corpus_paths(self.corpus)
        with tempfile.TemporaryDirectory() as tmp:
            ext = bench_extractive(paths, Path(tmp) / "extractive_qa.jsonl")
            remote = bench_remote(paths, Path(tmp), self.passages, self.latency_ms, self.max_concurrency)
        md = to_markdown(ext, remote, paths, self.passages, self.latency_ms, self.max_concurrency)
        return {"extractive": ext, "fake_server": remote, "markdown": md}


def _start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnfbot.bench.fake_openai", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def bench_extractive(paths: list[str], out: Path) -> dict:
    """The whole `dnfbot synth qa --backend extractive` command in a fresh process: wall time includes Python
    start-up, imports, corpus loading, chunking, the Kiwi model load and synthesis."""
    cmd = [sys.executable, "-m", "dnfbot", "synth", "qa", "--backend", "extractive", "--out", str(out)]
    cmd += [arg for p in paths for arg in ("--corpus", str(p))] + ["--no-progress", "--json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"extractive run failed: {p.stderr.strip()[-300:]}")
    s = json.loads(p.stdout)
    return {
        "passages": s["passages"],
        "records": s["records"],
        "rejects": s["rejects"],
        "job_s": s["seconds"],
        "wall_s": round(wall, 3),
    }


def bench_remote(paths: list[str], workdir: Path, passages: int, latency_ms: float, concurrency: int) -> dict:
    from dnfbot.config import ChunkSettings
    from dnfbot.corpus import load_chunks
    from dnfbot.synth.job import SynthOptions, plan, run_synth
    from dnfbot.synth.job import passages as job_passages

    chunks = load_chunks(paths, ChunkSettings()).chunks
    corpus = workdir / "bench_corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(passages):
            c = chunks[i % len(chunks)]
            rec = {"id": f"b{i}", "title": c.title, "text": f"{c.text[:2800]}\n(bench #{i})"}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out = workdir / "bench_qa.jsonl"
    proc, base_url = _start_server(latency_ms)
    try:
        opts = SynthOptions(
            out=out,
            model="fake-model",
            long_model=None,
            base_url=base_url,
            max_concurrency=concurrency,
            show_progress=False,
        )
        s = run_synth(opts, [corpus])
    finally:
        proc.terminate()
        proc.wait(10)
    from dnfbot.synth.prompt import load_template

    expected = {t.key for t in plan(job_passages([corpus], opts), opts, load_template())[0]}
    ids = [r["id"] for r in read_jsonl(out)]
    return {
        "passages": s["passages"],
        "records": s["records"],
        "rejects": s["rejects"],
        "retries": s["retries"]["total"],
        "job_s": s["seconds"],
        "passages_per_s": round(s["passages"] / s["seconds"], 1),
        "lost": len(expected - set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "latency_ms": latency_ms,
        "concurrency": concurrency,
    }


def to_markdown(ext: dict, remote: dict, paths, passages, latency_ms, concurrency) -> str:
    opts = []
    if passages != 1000:
        opts.append(f"--passages {passages}")
    if latency_ms != 20.0:
        opts.append(f"--latency-ms {latency_ms:g}")
    if concurrency != 32:
        opts.append(f"--max-concurrency {concurrency}")
    cmd = " ".join(["dnfbot bench synth", *opts])
    ok = "yes" if remote["passages_per_s"] >= 100 and remote["lost"] == 0 else "no"
    ok_ext = "yes" if ext["wall_s"] < 60 else "no"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # other jobs on the machine
    return "\n".join(
        [
            "## Data synthesis (`dnfbot bench synth`)",
            "",
            f"Command: `{cmd}` over {', '.join(paths)} ({os.cpu_count()} CPU cores, shared by the job, its "
            f"reply-validator process and the fake server process; 1-min load average {load:.1f} at the end).",
            "",
            "| run | passages | records | rejects | retries | time (s) | passages/s | lost | duplicated | target met |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| `synth qa` → fake OpenAI-compatible server, {latency_ms:g} ms latency, --max-concurrency "
            f"{concurrency} (real openai client, Kiwi validation) | {remote['passages']} | {remote['records']} | "
            f"{remote['rejects']} | {remote['retries']} | {remote['job_s']:.2f} | {remote['passages_per_s']:.1f} | "
            f"{remote['lost']} | {remote['duplicated']} | {ok} (>= 100/s, 0 lost) |",
            f"| `synth qa --backend extractive`, whole corpus (CLI wall time: process start, imports, corpus load, "
            f"chunking, Kiwi load; synthesis alone {ext['job_s']:.2f} s) | "
            f"{ext['passages']} | {ext['records']} | {ext['rejects']} | — | {ext['wall_s']:.2f} | "
            f"{ext['passages'] / ext['wall_s']:.1f} | — | — | {ok_ext} (< 60 s) |",
            "",
            "Extractive rejects are passages with fewer than five prose sentences (lists, tables, link dumps); "
            "they are counted in the rejects file with their reason.",
        ]
    )
