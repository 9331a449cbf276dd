"""Load for `dnfbot bench feedback`, run as its own process (keep-alive raw HTTP/1.1, as dnfbot.bench.loadgen).

    python -m dnfbot.bench.feedback_load seq   --url URL --questions q.txt --duration 15
    python -m dnfbot.bench.feedback_load pair  --url URL_A --url-b URL_B --questions q.txt --duration 30
    python -m dnfbot.bench.feedback_load mixed --url URL --questions q.txt --duration 30 --ask-rate 100 \
                                            --feedback-rate 200 --nonces out.txt

seq: one client asking /ask back to back. pair: one client alternating between two servers (log off, log on:
the latency the answer log adds, see run_pair). mixed: /ask at a fixed rate and, unless
--feedback-rate 0, POST /v1/feedback at a fixed rate (open loop: each request is due at its scheduled time, and
its latency counts from then, so a slow server cannot hide its queue) on answers asked first. Every feedback POST
carries a unique nonce in its comment; the ones answered 200 are written to --nonces so the bench can count what
reached the database. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from dnfbot.bench.loadgen import Conn, percentiles, target


async def _request(conn: Conn, path: str, body: dict) -> tuple[int, bytes]:
    await conn.send(path, body)
    status, headers = await conn.head()
    return status, await conn.body(headers)


async def run_seq(url: str, questions: list[str], duration: float) -> dict:
    host, port = target(url)
    conn = Conn(host, port)
    await conn.open()
    lat, errors, n = [], 0, 0
    deadline = time.perf_counter() + duration
    try:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            status, _ = await _request(conn, "/ask", {"question": questions[n % len(questions)]})
            n += 1
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
    finally:
        conn.close()
    return {"requests": n, "errors": errors, **percentiles(lat)}


async def run_pair(url_a: str, url_b: str, questions: list[str], duration: float) -> dict:
    """One client alternating between two servers, the same question to each, the order swapped every pair: both
    see the same machine load at nearly the same moment, so the median per-pair difference (b - a) is the cost
    of what b does more, even on a busy machine whose load drifts more than that within seconds."""
    conns = []
    for url in (url_a, url_b):
        host, port = target(url)
        c = Conn(host, port)
        await c.open()
        conns.append(c)
    for q in questions:  # warm both servers' caches with every question first (untimed)
        for c in conns:
            await _request(c, "/ask", {"question": q})
    lat: dict[str, list[float]] = {"a": [], "b": []}
    diffs: list[float] = []
    errors, n = 0, 0
    deadline = time.perf_counter() + duration
    try:
        while time.perf_counter() < deadline:
            body = {"question": questions[n % len(questions)]}
            order = ("a", "b") if n % 2 == 0 else ("b", "a")
            took = {}
            for side in order:
                t = time.perf_counter()
                status, _ = await _request(conns[side == "b"], "/ask", body)
                took[side] = time.perf_counter() - t
                errors += status != 200
            n += 1
            for side in "ab":
                lat[side].append(took[side])
            diffs.append(took["b"] - took["a"])
    finally:
        for c in conns:
            c.close()
    diffs.sort()
    return {
        "pairs": n,
        "errors": errors,
        "a": percentiles(lat["a"]),
        "b": percentiles(lat["b"]),
        "median_diff_ms": round(diffs[len(diffs) // 2] * 1000, 3) if diffs else None,
    }


class Pool:
    """`size` keep-alive connections handed out one request at a time."""

    def __init__(self, host: str, port: int, size: int):
        self.host, self.port, self.size = host, port, size
        self.free: asyncio.Queue = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            c = Conn(self.host, self.port)
            await c.open()
            self.free.put_nowait(c)

    async def call(self, path: str, body: dict) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            return await _request(conn, path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            conn = Conn(self.host, self.port)
            await conn.open()
            raise
        finally:
            self.free.put_nowait(conn)

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()


async def _paced(rate: float, duration: float, make) -> None:
    """Start make(i) at t0 + i/rate for `duration` seconds; wait for all of them."""
    t0 = time.perf_counter()
    tasks, i = [], 0
    while True:
        due = t0 + i / rate
        if due - t0 >= duration:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(i, due)))
        i += 1
    await asyncio.gather(*tasks)


async def run_mixed(url: str, questions: list[str], duration: float, ask_rate: float, feedback_rate: float,
                    nonces_path: str | None, seed_answers: int = 200) -> dict:  # fmt: skip
    host, port = target(url)
    ask_pool, fb_pool = Pool(host, port, 32), Pool(host, port, 32)
    await ask_pool.open()
    await fb_pool.open()
    ids: list[str] = []
    # Every run first asks each question once (warm caches, so runs compare alike); the ids are what the
    # feedback is given on.
    for i in range(max(seed_answers, len(questions))):
        status, body = await ask_pool.call("/ask", {"question": questions[i % len(questions)]})
        if status == 200 and feedback_rate > 0:
            ids.append(json.loads(body)["answer_id"])
    if feedback_rate > 0 and not ids:
        raise SystemExit("no answer ids: is the server's answer log on?")
    await asyncio.sleep(0.5)  # let the seed answers reach the database
    ask_lat, ask_status, fb_lat, fb_status, fb_errors = [], {}, [], {}, []
    acked: list[str] = []
    run = uuid.uuid4().hex[:8]

    async def ask(i: int, due: float) -> None:
        try:
            status, _ = await ask_pool.call("/ask", {"question": questions[i % len(questions)]})
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = -1
        ask_status[status] = ask_status.get(status, 0) + 1
        if status == 200:
            ask_lat.append(time.perf_counter() - due)

    async def feedback(i: int, due: float) -> None:
        nonce = f"bench-{run}-{i:07d}"
        body = {"answer_id": ids[i % len(ids)], "rating": "down" if i % 3 else "up", "comment": nonce}
        if i % 5 == 0:
            body["correction"] = f"고친 답변 {nonce}"
        try:
            status, _ = await fb_pool.call("/v1/feedback", body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            status = -1
            fb_errors.append(f"{type(e).__name__}: {e}")
        fb_status[status] = fb_status.get(status, 0) + 1
        if status == 200:
            fb_lat.append(time.perf_counter() - due)
            acked.append(nonce)

    jobs = [_paced(ask_rate, duration, ask)]
    if feedback_rate > 0:
        jobs.append(_paced(feedback_rate, duration, feedback))
    t0 = time.perf_counter()
    await asyncio.gather(*jobs)
    wall = time.perf_counter() - t0
    ask_pool.close()
    fb_pool.close()
    if nonces_path:
        with open(nonces_path, "w", encoding="utf-8") as f:
            f.write("\n".join(acked) + ("\n" if acked else ""))
    n_fb = sum(fb_status.values())
    return {
        "seconds": round(wall, 2),
        "ask": {"rate": ask_rate, "requests": sum(ask_status.values()), "statuses": _keys(ask_status),
                **percentiles(ask_lat)},
        "feedback": {"rate": feedback_rate, "sent": n_fb, "ok": len(acked), "statuses": _keys(fb_status),
                     "achieved_rps": round(n_fb / wall, 1), "error_examples": fb_errors[:3], **percentiles(fb_lat)},
        "run": run,
    }  # fmt: skip


def _keys(d: dict) -> dict:
    return {str(k): v for k, v in sorted(d.items())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dnfbot.bench.feedback_load")
    p.add_argument("mode", choices=["seq", "pair", "mixed"])
    p.add_argument("--url", required=True)
    p.add_argument("--url-b", help="pair: the second server")
    p.add_argument("--questions", required=True)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--ask-rate", type=float, default=100.0)
    p.add_argument("--feedback-rate", type=float, default=200.0)
    p.add_argument("--nonces")
    a = p.parse_args(argv)
    with open(a.questions, encoding="utf-8") as f:
        questions = [line.strip() for line in f if line.strip()]
    if a.mode == "seq":
        result = asyncio.run(run_seq(a.url, questions, a.duration))
    elif a.mode == "pair":
        result = asyncio.run(run_pair(a.url, a.url_b, questions, a.duration))
    else:
        result = asyncio.run(run_mixed(a.url, questions, a.duration, a.ask_rate, a.feedback_rate, a.nonces))
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
