"""`dnfbot bench feedback`: the answer log under load, over real HTTP on loopback.

1. What the log costs an answer: one client asking /ask back to back, against `dnfbot serve --no-log` and
   `dnfbot serve` (logging), twice each in turn (ABAB, so drift in the machine's load hits both): p50 and p95.
2. Feedback under /ask load: /ask at a fixed rate alone, then the same /ask load with POST /v1/feedback at
   `rate` per second alongside (open loop, `duration` s each). Every acknowledged feedback row must be in the
   database afterwards (lost = acknowledged but absent) exactly once (duplicated = a nonce stored twice).
Targets: log adds <= 1 ms to the p50; 0 lost, 0 duplicated; /ask p95 with feedback <= 1.1x without.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnfbot.bench.report import update_section
from dnfbot.errors import DnfbotError
from dnfbot.serve.bench import READY_TIMEOUT_S, _get_json, _loadavg, _Server

TARGET_LOG_P50_MS = 1.0
TARGET_P95_RATIO = 1.10


class _LogServer(_Server):
    """`dnfbot serve --warm` with or without the answer log, one worker (the log's writer shares its process)."""

    def __init__(self, index_dir: Path | None, db: Path | None):
        cmd = [sys.executable, "-m", "dnfbot", "serve", "--port", "0", "--json", "--no-access-log", "--warm",
               "--max-concurrent", "64", "--workers", "1"]  # fmt: skip
        if index_dir:
            cmd += ["--index-dir", str(index_dir)]
        if db is None:
            cmd.append("--no-log")
        env = {k: v for k, v in os.environ.items() if k != "DNFBOT_API_KEY"}
        if db is not None:
            env["DNFBOT_FEEDBACK_DB"] = str(db)
        self.workers = 1
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
                self.health = _get_json(self.url + "/healthz")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise DnfbotError("server did not become healthy") from None
                time.sleep(0.2)
        self.wait_warm()


def _load(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "dnfbot.feedback.loadgen", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise DnfbotError(f"load generator failed: {(p.stderr.strip().splitlines() or [p.returncode])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_bench(
    index_dir: Path | None = None,
    queries: Path = Path("eval/dev.jsonl"),
    duration: float = 30.0,
    rate: float = 200.0,
    ask_rate: float = 100.0,
    seq_duration: float = 15.0,
    write: bool = True,
    report_path: Path | None = None,
) -> dict:
    from dnfbot.commands import read_questions

    questions = read_questions(queries)
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "questions.txt"
        qfile.write_text("\n".join(" ".join(q.split()) for q in questions) + "\n", encoding="utf-8")
        q = ["--url", "", "--questions", str(qfile)]

        def seq(server) -> dict:
            q[1] = server.url
            return _load(["seq", *q, "--duration", str(seq_duration)], seq_duration + 120)

        # 1. the log's cost per answer, ABAB
        cost = {"off": [], "on": []}
        for round_ in range(2):
            for mode in ("off", "on"):
                db = Path(tmp) / f"cost-{round_}.sqlite3" if mode == "on" else None
                server = _LogServer(index_dir, db)
                try:
                    cost[mode].append(seq(server))
                finally:
                    server.stop()
        # 2. feedback at `rate`/s with /ask at `ask_rate`/s alongside, against /ask alone
        db = Path(tmp) / "load.sqlite3"
        server = _LogServer(index_dir, db)
        nonces = Path(tmp) / "nonces.txt"
        try:
            q[1] = server.url
            load_before = _loadavg()
            alone = _load(["mixed", *q, "--duration", str(duration), "--ask-rate", str(ask_rate),
                           "--feedback-rate", "0"], duration + 300)  # fmt: skip
            mixed = _load(["mixed", *q, "--duration", str(duration), "--ask-rate", str(ask_rate),
                           "--feedback-rate", str(rate), "--nonces", str(nonces)], duration + 300)  # fmt: skip
            load_after = _loadavg()
        finally:
            rc = server.stop()  # graceful: the writer drains its queue
        acked = [n for n in nonces.read_text(encoding="utf-8").splitlines() if n]
        conn = sqlite3.connect(db)
        counts = dict(conn.execute("SELECT comment, COUNT(*) FROM feedback WHERE comment LIKE ? GROUP BY comment",
                                   (f"bench-{mixed['run']}-%",)).fetchall())  # fmt: skip
        answers_logged = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        conn.close()
    p50 = {m: statistics.median(r["p50_ms"] for r in cost[m]) for m in cost}
    p95 = {m: statistics.median(r["p95_ms"] for r in cost[m]) for m in cost}
    fb = mixed["feedback"]
    lost = sum(1 for n in acked if n not in counts)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    ratio = mixed["ask"]["p95_ms"] / alone["ask"]["p95_ms"] if alone["ask"]["p95_ms"] else None
    result = {
        "questions": len(questions),
        "log_cost": {"runs": cost, "p50_ms": p50, "p95_ms": p95, "added_p50_ms": round(p50["on"] - p50["off"], 3)},
        "alone": alone,
        "mixed": mixed,
        "feedback_acked": len(acked),
        "feedback_stored": sum(counts.values()),
        "lost": lost,
        "duplicated": dup,
        "answers_logged": answers_logged,
        "ask_p95_ratio": round(ratio, 3) if ratio else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "server_exit_code": rc,
        "targets": {
            "log_p50": p50["on"] - p50["off"] <= TARGET_LOG_P50_MS,
            "lost": lost == 0 and fb["ok"] == fb["sent"],
            "duplicated": dup == 0,
            "ask_p95": ratio is not None and ratio <= TARGET_P95_RATIO,
            "rate": fb["achieved_rps"] >= 0.95 * rate,
        },
    }
    result["command"] = ("dnfbot bench feedback" + (f" --duration {duration:g}" if duration != 30 else "")
                         + (f" --rate {rate:g}" if rate != 200 else "")
                         + (f" --ask-rate {ask_rate:g}" if ask_rate != 100 else ""))  # fmt: skip
    result["markdown"] = to_markdown(result)
    if write:
        update_section("feedback", result["markdown"], **({"path": report_path} if report_path else {}))
    return result


def _ok(flag: bool) -> str:
    return "✅" if flag else "❌"


def to_markdown(r: dict) -> str:
    c, a, m, ok = r["log_cost"], r["alone"]["ask"], r["mixed"], r["targets"]
    fb = m["feedback"]
    return "\n".join([
        "## Answer log and feedback (`dnfbot bench feedback`)",
        "",
        f"`{r['command']}` — `dnfbot serve --warm --workers 1` on loopback, SQLite answer log (WAL, synchronous=FULL, "
        "one background writer, group commit); load from separate processes (`python -m dnfbot.feedback.loadgen`, "
        f"keep-alive connections) over {r['questions']} dev-set questions. Load average before / after the load "
        f"runs: {r['loadavg_before']} → {r['loadavg_after']}.",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
        f"| /ask p50 / p95, one client back to back, log off | {c['p50_ms']['off']} / {c['p95_ms']['off']} ms "
        "(median of 2 runs) | — |",
        f"| /ask p50 / p95, one client back to back, log on | {c['p50_ms']['on']} / {c['p95_ms']['on']} ms | — |",
        f"| p50 the answer log adds | {c['added_p50_ms']} ms | <= {TARGET_LOG_P50_MS} ms {_ok(ok['log_p50'])} |",
        f"| feedback POSTs, {fb['rate']:g}/s for {m['seconds']} s with /ask at {m['ask']['rate']:g}/s | "
        f"{fb['sent']} sent ({fb['achieved_rps']}/s), {fb['ok']} answered 200, statuses {fb['statuses']}; "
        f"p50 / p95 {fb['p50_ms']} / {fb['p95_ms']} ms | {fb['rate']:g}/s {_ok(ok['rate'])} |",
        f"| acknowledged feedback missing from the database (lost) | {r['lost']} of {r['feedback_acked']} | "
        f"0 {_ok(ok['lost'])} |",
        f"| feedback stored twice (duplicated) | {r['duplicated']} | 0 {_ok(ok['duplicated'])} |",
        f"| /ask p95 at {a['rate']:g}/s alone → with feedback alongside | {a['p95_ms']} → {m['ask']['p95_ms']} ms "
        f"(x{r['ask_p95_ratio']}; p50 {a['p50_ms']} → {m['ask']['p50_ms']} ms) | <= x{TARGET_P95_RATIO} "
        f"{_ok(ok['ask_p95'])} |",
        f"| answers logged during the load runs | {r['answers_logged']} | all |",
    ])  # fmt: skip
