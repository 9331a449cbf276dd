"""The answer log: served answers and players' feedback, written by one background thread.

Answers are handed over (`log`) and the caller goes on at once: the writer batches whatever has queued into one
transaction (group commit), so a burst costs one commit, not one per answer, and the answering thread never waits
for the disk. Feedback (`feedback`, `feedback_async`) waits for its commit, so a 200 from POST /v1/feedback means
the row is on disk: a `kill -9` afterwards loses nothing that was acknowledged.

When the database is locked by another writer, the batch is retried; when it is corrupted, unwritable or
unreachable, one line goes to the log (at most one a minute per kind of failure), answers are dropped and counted,
feedback is refused with a one-line StoreError (HTTP 503), and answering goes on. The writer reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from dnfbot.feedback.db import Database, StoreError, default_url, display, one_line
from dnfbot.feedback.trace import ANSWER_COLUMNS, FEEDBACK_COLUMNS, AnswerEntry, FeedbackEntry, new_id

log = logging.getLogger("dnfbot.feedback")

INSERT_ANSWER = (
    f"INSERT INTO answers ({', '.join(ANSWER_COLUMNS)}) VALUES ({', '.join('?' * len(ANSWER_COLUMNS))}) "
    "ON CONFLICT (id) DO NOTHING"
)
INSERT_FEEDBACK = (
    f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' * len(FEEDBACK_COLUMNS))}) "
    "ON CONFLICT (id) DO NOTHING"
)
STORED, DUPLICATE, UNKNOWN = "stored", "duplicate", "unknown_answer"
WARN_EVERY_S = 60.0
RECONNECT_AFTER_S = 5.0
LOCK_RETRIES = 3


class AnswerLog:
    """Background writer over one database URL (see the module docstring). Thread-safe; one per process."""

    def __init__(self, url: str, *, max_queue: int = 50_000, batch: int = 1000, timeout_s: float = 2.0):
        self.url = url
        self.batch = batch
        self.timeout_s = timeout_s
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._db: Database | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._warned: dict[str, float] = {}
        self.counts = {"answers": 0, "feedback": 0, "dropped": 0, "failed_batches": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dnfbot-answer-log", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, url: str | None = None, home: Path | None = None, **kw) -> AnswerLog | None:
        """The log at `url`, else $DNFBOT_FEEDBACK_DB, else $DNFBOT_HOME/feedback.sqlite3; None if switched off."""
        url = url or default_url(home)
        return cls(url, **kw) if url else None

    @property
    def where(self) -> str:
        return display(self.url)

    new_id = staticmethod(new_id)

    # --- the callers' side ------------------------------------------------------------------------------
    def log(self, entry: AnswerEntry) -> str:
        """Queue one served answer; never blocks. Returns its id."""
        try:
            self._q.put_nowait(("answer", entry, None))
        except queue.Full:
            self.counts["dropped"] += 1
            self._warn("full", f"answer log queue full ({self._q.maxsize}): answers are not being stored")
        return entry.id

    def submit(self, entry: FeedbackEntry) -> Future:
        """Queue one feedback row; the future resolves to 'stored' | 'duplicate' | 'unknown_answer' once
        committed, or raises StoreError."""
        fut: Future = Future()
        if self._closed:
            fut.set_exception(StoreError("the answer log is closed"))
            return fut
        try:
            self._q.put(("feedback", entry, fut), timeout=self.timeout_s)
        except queue.Full:
            fut.set_exception(StoreError("feedback store busy: retry shortly"))
        return fut

    def feedback(self, entry: FeedbackEntry, timeout: float = 15.0) -> str:
        try:
            return self.submit(entry).result(timeout)
        except FutureTimeout:
            raise StoreError(
                f"feedback not stored within {timeout:g} s (database {self.where} busy)"
            ) from None

    async def feedback_async(self, entry: FeedbackEntry, timeout: float = 15.0) -> str:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.submit(entry)), timeout)
        except TimeoutError:
            raise StoreError(
                f"feedback not stored within {timeout:g} s (database {self.where} busy)"
            ) from None

    def flush(self, timeout: float = 15.0) -> bool:
        """Wait until everything queued before this call has been written (or failed)."""
        if not self._thread.is_alive():
            return False
        fut: Future = Future()
        self._q.put(("barrier", None, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            return False

    def close(self, timeout: float = 15.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._q.put(("stop", None, None))
        self._thread.join(timeout)

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the writer thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items = [self._q.get()]
            while len(items) < self.batch:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            work = [it for it in items if it[0] in ("answer", "feedback")]
            if work:
                try:
                    self._write(work)
                except Exception as e:  # never let the writer die: answering must not notice
                    self._fail(work, StoreError(f"answer log: {type(e).__name__}: {one_line(e)}"))
                    log.exception("answer log writer failed")
            for kind, _, fut in items:
                if kind == "barrier":
                    fut.set_result(True)
            if any(kind == "stop" for kind, _, _ in items):
                if self._db is not None:
                    self._db.close()
                return

    def _connect(self) -> Database:
        if self._db is None:
            if time.monotonic() < self._retry_at:
                raise StoreError(f"feedback database {self.where} unavailable: {self._last_error}")
            try:
                self._db = Database(self.url, timeout_s=self.timeout_s)
            except Exception as e:
                self._retry_at = time.monotonic() + RECONNECT_AFTER_S
                err = e if isinstance(e, StoreError) else StoreError(one_line(e))
                self._last_error = str(err).rsplit(": ", 1)[-1]
                raise err from None
        return self._db

    def _write(self, work: list) -> None:
        for attempt in range(LOCK_RETRIES):
            try:
                db = self._connect()
            except StoreError as e:
                self._fail(work, e)
                return
            try:
                results = self._transaction(db, work)
            except db.errors as e:
                db.rollback()
                msg = one_line(e)
                if "locked" in msg or "busy" in msg:
                    if attempt + 1 < LOCK_RETRIES:
                        time.sleep(0.1 * (attempt + 1))
                        continue
                else:  # corrupted, read-only, disk full, connection lost: start afresh later
                    db.close()
                    self._db = None
                    self._retry_at = time.monotonic() + RECONNECT_AFTER_S
                    self._last_error = msg
                self._fail(work, StoreError(f"feedback database {self.where}: {msg}"))
                return
            for (_kind, _, fut), res in zip(work, results, strict=True):
                if fut is not None:
                    fut.set_result(res)
            return

    def _transaction(self, db: Database, work: list) -> list:
        answers = [e.row() for kind, e, _ in work if kind == "answer"]
        db.begin()
        db.executemany(INSERT_ANSWER, answers)  # answers first: feedback in the same batch may name them
        results: list[str | None] = []
        for kind, e, _ in work:
            if kind != "feedback":
                results.append(None)
                continue
            if db.execute("SELECT 1 FROM answers WHERE id = ?", (e.answer_id,)).fetchone() is None:
                results.append(UNKNOWN)
                continue
            cur = db.execute(INSERT_FEEDBACK, e.row())
            results.append(STORED if cur.rowcount == 1 else DUPLICATE)
        db.commit()
        self.counts["answers"] += len(answers)
        self.counts["feedback"] += sum(r == STORED for r in results)
        return results

    def _fail(self, work: list, err: StoreError) -> None:
        n_answers = sum(kind == "answer" for kind, _, _ in work)
        self.counts["dropped"] += n_answers
        self.counts["failed_batches"] += 1
        for _kind, _, fut in work:
            if fut is not None and not fut.done():
                fut.set_exception(err)
        # one key for every failure of the database: the first error and the "unavailable" ones while the writer
        # waits to reconnect are one outage, one log line
        self._warn("database", f"{err} ({n_answers} answer(s) not logged; answering goes on)")

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[key] = now
            log.warning(message)


# --- reading (stats, export, purge): a connection of its own ---------------------------------------------------
def open_db(url: str | None = None, home: Path | None = None) -> Database:
    """The log for reading; a one-line error when logging is off or nothing was logged yet."""
    url = url or default_url(home)
    if url is None:
        raise StoreError("the answer log is switched off (DNFBOT_FEEDBACK_DB=off): give --db PATH|URL")
    return Database(url, create=False) if not url.startswith("postgres") else Database(url)


def iter_answers(db: Database, ids: set[str] | None = None, with_trace: bool = True) -> Iterator[dict]:
    cols = ANSWER_COLUMNS if with_trace else ANSWER_COLUMNS[:-1]
    rows = db.query(f"SELECT {', '.join(cols)} FROM answers ORDER BY created, id")
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        if ids is not None and d["id"] not in ids:
            continue
        if with_trace:
            import json

            try:
                d["trace"] = json.loads(d["trace"])
            except (TypeError, ValueError):
                d["trace"] = {}
        yield d


def read_feedback(db: Database) -> list[dict]:
    rows = db.query(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback ORDER BY created, id")
    return [dict(zip(FEEDBACK_COLUMNS, r, strict=True)) for r in rows]


def verdicts(feedback: list[dict]) -> dict[str, dict]:
    """Per answer: the latest rating, the latest correction and comment, and how many ups/downs it got."""
    out: dict[str, dict] = {}
    for f in feedback:  # in time order: later feedback replaces earlier (a 👍 changed to 👎)
        v = out.setdefault(f["answer_id"], {"rating": None, "correction": None, "comment": None, "up": 0,
                                            "down": 0, "feedback": 0})  # fmt: skip
        v["feedback"] += 1
        if f["rating"]:
            v["rating"] = f["rating"]
            v[f["rating"]] += 1
        if f["correction"]:
            v["correction"] = f["correction"]
        if f["comment"]:
            v["comment"] = f["comment"]
    return out


def purge(db: Database, before: float, dry_run: bool = False) -> dict:
    """Delete answers (with their feedback) and feedback older than `before` (epoch seconds), then compact so the
    deleted text is gone from the file too."""
    n_ans = db.query("SELECT COUNT(*) FROM answers WHERE created < ?", (before,))[0][0]
    n_fb = db.query(
        "SELECT COUNT(*) FROM feedback WHERE created < ? OR answer_id IN (SELECT id FROM answers WHERE created < ?)",
        (before, before),
    )[0][0]
    if not dry_run:
        try:
            db.begin()
            db.execute(
                "DELETE FROM feedback WHERE created < ? OR answer_id IN (SELECT id FROM answers WHERE created < ?)",
                (before, before),
            )
            db.execute("DELETE FROM answers WHERE created < ?", (before,))
            db.commit()
            db.compact()
        except db.errors as e:
            db.rollback()
            raise StoreError(f"feedback database {display(db.url)}: {one_line(e)}") from None
    return {"answers": int(n_ans), "feedback": int(n_fb), "dry_run": dry_run}


def parse_before(text: str) -> float:
    """'2025-01-31' (UTC midnight), an ISO date-time, or '30d' (30 days ago) → epoch seconds."""
    import datetime as dt
    import re

    from dnfbot.errors import InputError

    s = text.strip()
    m = re.fullmatch(r"(\d+)d", s)
    if m:
        return (dt.datetime.now(dt.UTC) - dt.timedelta(days=int(m.group(1)))).timestamp()
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise InputError(
            f"--before {text!r}: give a date (2025-01-31), a date-time (2025-01-31T12:00) or 30d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
