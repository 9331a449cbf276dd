"""`dnfbot bench serve-hostile`: the API under clients that send headers and one byte of body, then stall.

A real `dnfbot serve` process on loopback (extractive back end). First `normal` concurrent /ask requests alone
(unloaded), then the same while `slow_clients` connections hold a half-sent body, then one /ask right after the
slow clients hang up. Reported: how many normal requests were answered 200, their p95 latency (loaded vs
unloaded), the first answer after the slow clients leave, and the tracebacks in the server's log.
Targets (issue 14): every normal /ask answered 200 with p95 <= 2x unloaded; 0 tracebacks; answers at once after.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from dnfbot.eval.metrics import percentile
from dnfbot.options import option

QUESTIONS = ["더스크 피로도 얼마나 들어?", "무의 장막 신수 추천해줘", "소울브링어 출혈 세팅 괜찮아?"]


@dataclass
class HostileServeBench:
    """Normal /ask requests while slow-body clients hold connections: all answered, p95, tracebacks."""

    section = "serve-hostile"
    slow_clients: int = option(40, "connections that send headers and one byte of body, then stall")
    normal: int = option(20, "concurrent normal /ask requests, measured with and without the slow clients")
    rounds: int = option(3, "passes of the normal requests in each phase")
    index_dir: Path | None = option(None, "index to serve (default: the configured one)")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        import json

        cmd = [sys.executable, "-m", "dnfbot", "serve", "--port", "0", "--json", "--no-access-log"]
        if self.index_dir:
            cmd += ["--index-dir", str(self.index_dir)]
        if self.config:
            cmd += ["--config", str(self.config)]
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            try:
                line = proc.stdout.readline()
                if not line:
                    log.seek(0)
                    raise RuntimeError(f"dnfbot serve did not start: {log.read().strip()[-300:]}")
                url = json.loads(line)["url"]
                _wait_healthy(url)
                result = self._measure(url)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            log.seek(0)
            server_log = log.read()
        result["server_tracebacks"] = server_log.count("Traceback")
        result["markdown"] = to_markdown(result, self)
        return result

    def _measure(self, url: str) -> dict:
        for q in QUESTIONS:  # warm: the first analysis of a passage is slower
            _ask(url, q)
        unloaded = self._phase(url)
        stop, timed_out = threading.Event(), []
        slow = [
            threading.Thread(target=_stall, args=(url, stop, timed_out), daemon=True)
            for _ in range(self.slow_clients)
        ]
        for t in slow:
            t.start()
        time.sleep(0.5)
        loaded = self._phase(url)
        stop.set()
        for t in slow:
            t.join(timeout=30)
        code, seconds = _ask(url, QUESTIONS[0])
        return {
            "unloaded": unloaded,
            "loaded": loaded,
            "after": {"status": code, "ms": round(seconds * 1000, 1)},
            "p95_ratio": round(loaded["p95_ms"] / unloaded["p95_ms"], 2) if unloaded["p95_ms"] else None,
            "slow_bodies_timed_out": len(timed_out),
        }

    def _phase(self, url: str) -> dict:
        results = []
        with ThreadPoolExecutor(self.normal) as pool:
            for _ in range(self.rounds):
                qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(self.normal)]
                results += list(pool.map(lambda q: _ask(url, q), qs))
        ms = [s * 1000 for _, s in results]
        return {
            "requests": len(results),
            "ok": sum(1 for c, _ in results if c == 200),
            "statuses": sorted({str(c) for c, _ in results}),
            "p50_ms": round(percentile(ms, 50), 1),
            "p95_ms": round(percentile(ms, 95), 1),
        }


def _stall(url: str, stop: threading.Event, timed_out: list) -> None:
    """One hostile client: headers and one byte of a 1000-byte body, then nothing; when the server gives up on
    it (408), it connects again — so the slow clients stay for the whole phase."""
    u = urlparse(url)
    while not stop.is_set():
        with socket.create_connection((u.hostname, u.port), timeout=60) as s:
            s.sendall(
                f"POST /ask HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\ncontent-type: application/json\r\n"
                "content-length: 1000\r\n\r\n{".encode()
            )
            s.settimeout(0.2)
            while not stop.is_set():
                try:
                    reply = s.recv(4096)
                except TimeoutError:
                    continue
                if reply.startswith(b"HTTP/1.1 408"):
                    timed_out.append(1)
                break


def _ask(url: str, question: str) -> tuple[int | str, float]:
    import httpx

    t = time.perf_counter()
    try:
        code: int | str = httpx.post(url + "/ask", json={"question": question}, timeout=60).status_code
    except httpx.HTTPError as e:
        code = type(e).__name__
    return code, time.perf_counter() - t


def _wait_healthy(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/healthz did not answer within {timeout:.0f} s")


def to_markdown(r: dict, b: HostileServeBench) -> str:
    un, lo = r["unloaded"], r["loaded"]
    ok = lo["ok"] == lo["requests"] and (r["p95_ratio"] or 99) <= 2 and r["server_tracebacks"] == 0
    return "\n".join(
        [
            "## Serving under slow-body clients (`dnfbot bench serve-hostile`)",
            "",
            f"Command: `dnfbot bench serve-hostile --slow-clients {b.slow_clients} --normal {b.normal} "
            f"--rounds {b.rounds}`. A `dnfbot serve` process (extractive, default limits: 32 slots, 10 s body "
            f"timeout); {b.normal} concurrent /ask clients × {b.rounds} rounds alone, then again while "
            f"{b.slow_clients} connections hold a half-sent body (each connects again when the server times "
            "it out with 408).",
            "",
            "| phase | answered 200 | statuses | p50 ms | p95 ms |",
            "|---|---:|---|---:|---:|",
            f"| unloaded | {un['ok']}/{un['requests']} | {', '.join(un['statuses'])} | {un['p50_ms']} "
            f"| {un['p95_ms']} |",
            f"| with {b.slow_clients} slow-body clients | {lo['ok']}/{lo['requests']} | "
            f"{', '.join(lo['statuses'])} | {lo['p50_ms']} | {lo['p95_ms']} |",
            "",
            f"p95 loaded / unloaded: {r['p95_ratio']}×; first /ask after the slow clients hang up: "
            f"{r['after']['status']} in {r['after']['ms']} ms; tracebacks in the server log: "
            f"{r['server_tracebacks']}; slow bodies timed out (408): {r['slow_bodies_timed_out']}. Target (all answered, p95 ≤ 2×, 0 tracebacks): {'✅' if ok else '❌'}",
        ]
    )
