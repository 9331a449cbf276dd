"""`dnfbot bench feedback`: the answer log under load, over real HTTP on loopback.

1. What the log costs an answer: `dnfbot serve --no-log` and `dnfbot serve` (logging) up at once, one client
   alternating between them with the same question (order swapped every pair): the median per-pair difference
   is the cost, and the machine's load, which drifts by more than a millisecond within seconds on a shared
   machine, hits both sides alike.
2. Feedback under /ask load: /ask at a fixed rate alone (duration/2 s), then the same /ask load with POST
   /v1/feedback at `rate` per second alongside (open loop, `duration` s), then /ask alone again (duration/2 s);
   the baseline p95 is the mean of the two alone runs, so drift during the run does not count for or against.
   Each run (and the pair run) first asks every question once, untimed, so cold caches count for no side.
   Every acknowledged feedback row must be in the database afterwards (lost = acknowledged but absent) exactly
   once (duplicated = a nonce stored twice).
Targets: log adds <= 1 ms to the p50; 0 lost, 0 duplicated; /ask p95 with feedback <= 1.1x without.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dnfbot.bench.serve import Server, loadavg
from dnfbot.errors import DnfbotError
from dnfbot.options import command_line, option

TARGET_LOG_P50_MS = 1.0
TARGET_P95_RATIO = 1.10


@dataclass
class FeedbackBench:
    """Feedback POSTs under /ask load (lost / duplicated / /ask p95) and the answer log's cost on /ask."""

    section = "feedback"
    index_dir: Path | None = option(None, "index folder (default: $DNFBOT_HOME/index or the user data dir)")
    queries: Path = option(Path("eval/dev.jsonl"), "questions for the /ask load (JSONL)")
    duration: float = option(30.0, "seconds of each feedback-load run")
    rate: float = option(200.0, "feedback POSTs per second")
    ask_rate: float = option(50.0, "/ask requests per second alongside")
    seq_duration: float = option(30.0, "seconds of the log-cost run (one client alternating log off / on)")
    cpu_threads: int = option(2, "the server's threads for retrieval and extractive answers")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        return _run(self)


def _server(b: FeedbackBench, db: Path | None) -> Server:
    """`dnfbot serve --warm --workers 1` with or without the answer log (its writer shares the process)."""
    server = Server(b.index_dir, b.config, 64, b.cpu_threads, 1, extra=[] if db else ["--no-log"],
                    env={"DNFBOT_FEEDBACK_DB": str(db)} if db else None)  # fmt: skip
    try:
        server.wait_warm()
    except BaseException:
        server.stop()
        raise
    return server


def _load(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "dnfbot.bench.feedback_load", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise DnfbotError(f"load generator failed: {(p.stderr.strip().splitlines() or [p.returncode])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run(b: FeedbackBench) -> dict:
    from dnfbot.rag import read_questions

    questions = read_questions(b.queries)
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "questions.txt"
        qfile.write_text("\n".join(" ".join(q.split()) for q in questions) + "\n", encoding="utf-8")
        q = ["--url", "", "--questions", str(qfile)]

        # 1. the log's cost per answer: both servers up at once, one client alternating between them
        off, on = _server(b, None), None
        try:
            on = _server(b, Path(tmp) / "cost.sqlite3")
            pair = _load(["pair", "--url", off.url, "--url-b", on.url, "--questions", str(qfile),
                          "--duration", str(b.seq_duration)], b.seq_duration + 120)  # fmt: skip
        finally:
            for server in (off, on):
                if server is not None:
                    server.stop()
        # 2. feedback at `rate`/s with /ask at `ask_rate`/s alongside, against /ask alone
        db = Path(tmp) / "load.sqlite3"
        nonces = Path(tmp) / "nonces.txt"
        server = _server(b, db)
        try:
            q[1] = server.url
            load_before = loadavg()
            mix = [*q, "--ask-rate", str(b.ask_rate)]
            half = ["--duration", str(b.duration / 2), "--feedback-rate", "0"]
            before = _load(["mixed", *mix, *half], b.duration + 300)
            mixed = _load(["mixed", *mix, "--duration", str(b.duration), "--feedback-rate", str(b.rate),
                           "--nonces", str(nonces)], b.duration + 300)  # fmt: skip
            after = _load(["mixed", *mix, *half], b.duration + 300)
            load_after = loadavg()
        finally:
            rc = server.stop()  # graceful: the writer drains its queue
        acked = [n for n in nonces.read_text(encoding="utf-8").splitlines() if n]
        conn = sqlite3.connect(db)
        counts = dict(conn.execute("SELECT comment, COUNT(*) FROM feedback WHERE comment LIKE ? GROUP BY comment",
                                   (f"bench-{mixed['run']}-%",)).fetchall())  # fmt: skip
        answers_logged = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        conn.close()
    fb = mixed["feedback"]
    lost = sum(1 for n in acked if n not in counts)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    alone = {"ask": {k: round((before["ask"][k] + after["ask"][k]) / 2, 2) for k in ("p50_ms", "p95_ms")}}
    alone["ask"]["rate"] = b.ask_rate
    alone["before"], alone["after"] = before["ask"], after["ask"]
    ratio = mixed["ask"]["p95_ms"] / alone["ask"]["p95_ms"] if alone["ask"]["p95_ms"] else None
    result = {
        "questions": len(questions),
        "log_cost": {
            "off": pair["a"],
            "on": pair["b"],
            "pairs": pair["pairs"],
            "errors": pair["errors"],
            "added_p50_ms": pair["median_diff_ms"],
        },  # fmt: skip
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
            "log_p50": pair["median_diff_ms"] is not None and pair["median_diff_ms"] <= TARGET_LOG_P50_MS,
            "lost": lost == 0 and fb["ok"] == fb["sent"],
            "duplicated": dup == 0,
            "ask_p95": ratio is not None and ratio <= TARGET_P95_RATIO,
            "rate": fb["achieved_rps"] >= 0.95 * b.rate,
        },
    }
    result["command"] = command_line("dnfbot bench feedback", b)
    result["markdown"] = to_markdown(result)
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
        "one background writer, group commit); load from separate processes (`python -m dnfbot.bench.feedback_load`, "
        f"keep-alive connections) over {r['questions']} dev-set questions. Load average before / after the load "
        f"runs: {r['loadavg_before']} → {r['loadavg_after']}.",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
        f"| /ask p50 / p95, log off (one client alternating between the two servers, {c['pairs']} pairs) | "
        f"{c['off']['p50_ms']} / {c['off']['p95_ms']} ms | — |",
        f"| /ask p50 / p95, log on | {c['on']['p50_ms']} / {c['on']['p95_ms']} ms | — |",
        f"| p50 the answer log adds (median of the per-pair differences) | {c['added_p50_ms']} ms | "
        f"<= {TARGET_LOG_P50_MS} ms {_ok(ok['log_p50'])} |",
        f"| feedback POSTs, {fb['rate']:g}/s for {m['seconds']} s with /ask at {m['ask']['rate']:g}/s | "
        f"{fb['sent']} sent ({fb['achieved_rps']}/s), {fb['ok']} answered 200, statuses {fb['statuses']}; "
        f"p50 / p95 {fb['p50_ms']} / {fb['p95_ms']} ms | {fb['rate']:g}/s {_ok(ok['rate'])} |",
        f"| acknowledged feedback missing from the database (lost) | {r['lost']} of {r['feedback_acked']} | "
        f"0 {_ok(ok['lost'])} |",
        f"| feedback stored twice (duplicated) | {r['duplicated']} | 0 {_ok(ok['duplicated'])} |",
        f"| /ask p95 at {a['rate']:g}/s alone (mean of before {r['alone']['before']['p95_ms']} and after "
        f"{r['alone']['after']['p95_ms']}) → with feedback alongside | {a['p95_ms']} → {m['ask']['p95_ms']} ms "
        f"(x{r['ask_p95_ratio']}; p50 {a['p50_ms']} → {m['ask']['p50_ms']} ms) | <= x{TARGET_P95_RATIO} "
        f"{_ok(ok['ask_p95'])} |",
        f"| answers logged during the load runs | {r['answers_logged']} | all |",
    ])  # fmt: skip
