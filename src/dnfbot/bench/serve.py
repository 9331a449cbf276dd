"""`dnfbot bench serve`: the extractive back end over real HTTP on loopback.

Three measurements against a `dnfbot serve` process, each driven by a separate load-generator process
(dnfbot.bench.loadgen) so client and server do not share an interpreter:
  1. /ask, closed loop, `concurrency` clients for `duration` seconds: requests/s, latency p50/p95/p99, errors;
  2. time to first token of streaming chat completions, one at a time;
  3. a burst of `stream_clients` simultaneous streaming requests: each is served to `data: [DONE]` or refused
     with 429 + Retry-After — none hangs, none breaks — and the server still answers afterwards.
Targets: >= 200 req/s and p95 <= 50 ms at 16 clients, 0 errors; burst fully accounted for.
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

from dnfbot.errors import DnfbotError
from dnfbot.options import command_line, option

TARGET_RPS = 200
TARGET_P95_MS = 50
READY_TIMEOUT_S = 120
WARM_TIMEOUT_S = 600


def get_json(url: str, timeout: float = 5.0) -> dict:
    import httpx

    return httpx.get(url, timeout=timeout).json()


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process and its live descendants (the --workers processes); Linux /proc,
    None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _cpu_seconds(int(child)) or 0.0
        return total
    except (OSError, IndexError, ValueError):
        return None


def http_stack() -> str:
    """What uvicorn runs on here: uvloop + httptools (uvicorn[standard]) serve ~1.7x more than asyncio + h11."""
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {uvicorn.__version__} ({loop}, {http})"


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _loadgen(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "dnfbot.bench.loadgen", *args]
    env = {k: v for k, v in os.environ.items() if k != "DNFBOT_API_KEY"}  # the bench server runs without one
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise DnfbotError(
            f"load generator failed: {p.stderr.strip().splitlines()[-1] if p.stderr else p.returncode}"
        )
    return json.loads(p.stdout.strip().splitlines()[-1])


class Server:
    """`dnfbot serve` in a subprocess on a free loopback port."""

    def __init__(
        self,
        index_dir: Path | None,
        config: Path | None,
        max_concurrent: int,
        cpu_threads: int,
        workers: int,
        extra: list[str] = (),
        env: dict[str, str] | None = None,
    ):
        cmd = [sys.executable, "-m", "dnfbot", "serve", "--port", "0", "--json", "--no-access-log", "--warm",
               "--max-concurrent", str(max_concurrent), "--cpu-threads", str(cpu_threads),
               "--workers", str(workers)]  # fmt: skip
        self.workers = workers
        if index_dir:
            cmd += ["--index-dir", str(index_dir)]
        if config:
            cmd += ["--config", str(config)]
        cmd += list(extra)  # more `dnfbot serve` flags (bench feedback: --no-log)
        env = {**os.environ, **(env or {})}
        env.pop("DNFBOT_API_KEY", None)
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise DnfbotError(f"server did not start: {self.log.read().strip()[-500:]}")
        self.url = json.loads(line)["url"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self.health = get_json(self.url + "/healthz")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise DnfbotError("server did not become healthy") from None
                time.sleep(0.2)

    def wait_warm(self) -> float:
        """Until every worker is up and has analysed every passage (each answers /healthz with its pid)."""
        t = time.perf_counter()
        deadline = time.monotonic() + WARM_TIMEOUT_S
        ready: set[int] = set()
        while time.monotonic() < deadline:
            try:
                h = get_json(self.url + "/healthz")
            except Exception:
                time.sleep(0.2)
                continue
            warm = h["warm"]
            if warm is None or warm["cached"] >= warm["passages"]:
                ready.add(h["pid"])
                if len(ready) >= self.workers:
                    return time.perf_counter() - t
            time.sleep(0.1)
        raise DnfbotError("server did not finish warming up")

    def alive(self) -> bool:
        try:
            return self.proc.poll() is None and get_json(self.url + "/healthz")["status"] == "ok"
        except Exception:
            return False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class ServeBench:
    """Throughput/latency of /ask, time to first token, and a burst of streams — over real HTTP."""

    section = "serve"
    index_dir: Path | None = option(None, "index folder (default: $DNFBOT_HOME/index or the user data dir)")
    corpus: list[Path] | None = option(None, "build a fresh index from this corpus (default: the live index)")
    queries: Path = option(Path("eval/dev.jsonl"), "questions to ask (JSONL)")
    duration: float = option(60.0, "seconds of the /ask load run")
    concurrency: int = option(16, "clients in the /ask run")
    stream_clients: int = option(200, "simultaneous streaming requests")
    workers: int = option(2, "server processes (dnfbot serve --workers; one per core)")
    max_concurrent: int = option(32, "the server's requests in flight per worker")
    cpu_threads: int = option(2, "the server's threads for retrieval and extractive answers")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        return _run(self)


def _run(b: ServeBench) -> dict:
    from dnfbot.rag import read_questions

    index_dir = b.index_dir
    questions = read_questions(b.queries)
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "questions.txt"
        qfile.write_text("\n".join(" ".join(q.split()) for q in questions) + "\n", encoding="utf-8")
        if b.corpus:
            from dnfbot.config import load_settings
            from dnfbot.retrieval.index import build_index

            index_dir = Path(tmp) / "index"
            build_index(b.corpus, index_dir, load_settings(b.config))
        server = Server(index_dir, b.config, b.max_concurrent, b.cpu_threads, b.workers)
        try:
            warm_s = server.wait_warm()
            load_before = loadavg()
            cpu0, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
            ask = _loadgen(["ask", "--url", server.url, "--questions", str(qfile), "--duration", str(b.duration),
                            "--concurrency", str(b.concurrency)], timeout=b.duration + 120)  # fmt: skip
            cpu1, t1 = _cpu_seconds(server.proc.pid), time.perf_counter()
            load_after = loadavg()
            ttft = _loadgen(["ttft", "--url", server.url, "--questions", str(qfile), "--requests", "50"], 300)
            burst = _loadgen(["burst", "--url", server.url, "--questions", str(qfile), "--clients",
                              str(b.stream_clients), "--timeout", "120"], timeout=300)  # fmt: skip
            alive_after = server.alive()
        finally:
            rc = server.stop()
    server_cpu = round((cpu1 - cpu0) / (t1 - t0), 2) if cpu0 is not None and cpu1 is not None else None
    result = {
        "questions": len(questions),
        "max_concurrent": b.max_concurrent,
        "cpu_threads": b.cpu_threads,
        "workers": b.workers,
        "http_stack": http_stack(),
        "warm_s": round(warm_s, 1),
        "ask": ask,
        "server_cpu_cores": server_cpu,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "ttft": ttft,
        "burst": burst,
        "alive_after_burst": alive_after,
        "server_exit_code": rc,
        "targets": {
            "rps": ask["rps"] >= TARGET_RPS,
            "p95": ask["p95_ms"] is not None and ask["p95_ms"] <= TARGET_P95_MS,
            "errors": ask["errors"] == 0,
            "burst": burst["hung"] == 0 and burst["failed"] == 0 and alive_after,
        },
    }
    cmd = command_line("dnfbot bench serve", b)
    result["command"] = cmd
    result["markdown"] = to_markdown(result)
    return result


def _ok(flag: bool) -> str:
    return "✅" if flag else "❌"


def to_markdown(r: dict) -> str:
    a, t, b, ok = r["ask"], r["ttft"], r["burst"], r["targets"]
    return "\n".join([
        "## Serving (HTTP API, extractive back end)",
        "",
        f"`{r['command']}` — `dnfbot serve --warm --no-access-log` ({r['http_stack']}, --workers {r['workers']}, "
        f"--max-concurrent {r['max_concurrent']} per worker, --cpu-threads {r['cpu_threads']}) on loopback; load from a "
        f"separate process (`python -m dnfbot.bench.loadgen`, "
        f"keep-alive connections) cycling through {r['questions']} dev-set questions. Passage analysis warmed "
        f"first ({r['warm_s']} s).",
        "",
        f"Machine load average (1/5/15 min) before / after the /ask run: {r['loadavg_before']} → "
        f"{r['loadavg_after']}; server CPU during the run: {r['server_cpu_cores']} cores.",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
        f"| /ask throughput, {a['concurrency']} clients, {a['seconds']} s | {a['rps']} req/s ({a['requests']} requests) "
        f"| >= {TARGET_RPS} {_ok(ok['rps'])} |",
        f"| /ask latency p50 / p95 / p99 / max | {a['p50_ms']} / {a['p95_ms']} / {a['p99_ms']} / {a['max_ms']} ms "
        f"| p95 <= {TARGET_P95_MS} ms {_ok(ok['p95'])} |",
        f"| /ask errors (non-200 or broken connections) | {a['errors']} | 0 {_ok(ok['errors'])} |",
        f"| streaming time to first token p50 / p95 ({t['ok']}/{t['requests']} ok, one at a time) | "
        f"{t['ttft']['p50_ms']} / {t['ttft']['p95_ms']} ms | — |",
        f"| streaming full answer p50 / p95 | {t['total']['p50_ms']} / {t['total']['p95_ms']} ms | — |",
        f"| burst of {b['clients']} simultaneous streams | {b['served']} served to [DONE], {b['refused_429']} refused "
        f"429 + Retry-After, {b['hung']} hung, {b['failed']} failed; server alive after: {r['alive_after_burst']} "
        f"| all served or 429 {_ok(ok['burst'])} |",
    ])  # fmt: skip
