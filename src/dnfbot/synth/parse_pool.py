"""Reply validation off the HTTP event loop.

Kiwi holds the GIL while it splits sentences, so validating in a thread would stall the event loop that
drives the requests. Large jobs therefore validate in worker processes (`python -m dnfbot.synth.parse`,
JSON lines over pipes: no multiprocessing, so nothing re-imports the caller's __main__); small jobs, where
starting a process and loading Kiwi again would cost more than it saves, use one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import sys

from dnfbot.synth.parse import QA, InvalidReply, get_kiwi, parse_reply

_LINE_LIMIT = 1 << 24  # replies are a few KB; a generous cap per JSON line


class ThreadParser:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dnfbot-parse")

    async def start(self) -> None:
        get_kiwi()

    async def parse(self, text: str) -> QA:
        return await asyncio.get_running_loop().run_in_executor(self._pool, parse_reply, text)

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessParser:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task] = []
        self._pending: dict[int, tuple[int, asyncio.Future]] = {}
        self._load: list[int] = []
        self._ids = itertools.count()

    async def start(self) -> None:
        """Start the workers; they load Kiwi while the caller gets on with its first requests."""
        for w in range(self.workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dnfbot.synth.parse",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
            )
            self._procs.append(proc)
            self._load.append(0)
            self._readers.append(asyncio.create_task(self._read(w, proc)))

    async def _read(self, w: int, proc: asyncio.subprocess.Process) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("ready"):
                continue
            _, fut = self._pending.pop(msg["i"])
            self._load[w] -= 1
            if fut.done():
                continue
            if "qa" in msg:
                fut.set_result(QA(**msg["qa"]))
            elif "invalid" in msg:
                fut.set_exception(InvalidReply(msg["invalid"]))
            else:
                fut.set_exception(RuntimeError(f"reply validator failed: {msg.get('error')}"))
        # The worker ended: whatever it still owed can never come.
        err = RuntimeError(f"reply validator process exited (code {await proc.wait()})")
        for i, (owner, fut) in list(self._pending.items()):
            if owner == w and not fut.done():
                fut.set_exception(err)
                self._pending.pop(i, None)

    async def parse(self, text: str) -> QA:
        w = min(range(self.workers), key=self._load.__getitem__)
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = (w, fut)
        self._load[w] += 1
        proc = self._procs[w]
        proc.stdin.write(json.dumps({"i": i, "text": text}, ensure_ascii=False).encode() + b"\n")
        await proc.stdin.drain()
        return await fut

    async def close(self) -> None:
        for proc in self._procs:
            if proc.stdin and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for r in self._readers:
            r.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def make_parser(workers: int) -> ThreadParser | ProcessParser:
    return ProcessParser(workers) if workers > 0 else ThreadParser()
