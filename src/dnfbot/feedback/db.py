"""One SQL code path for the answer log: SQLite (the default, one file under $DNFBOT_HOME, WAL) or PostgreSQL
(a URL, for a team that shares one server) through plain DB-API.

The SQL is written once with `?` placeholders and portable types (TEXT, INTEGER, DOUBLE PRECISION,
`INSERT … ON CONFLICT DO NOTHING`); for psycopg the placeholders become `%s`. Nothing else differs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from dnfbot.errors import DnfbotError, InputError

ENV = "DNFBOT_FEEDBACK_DB"  # a path, sqlite:///PATH, postgresql://…, or "off"
FILE_NAME = "feedback.sqlite3"
SCHEMA_VERSION = "1"
OFF = ("off", "none", "0", "false", "no")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS answers (
        id TEXT PRIMARY KEY,
        created DOUBLE PRECISION NOT NULL,
        channel TEXT NOT NULL,
        conversation TEXT,
        turn INTEGER NOT NULL,
        question TEXT NOT NULL,
        query TEXT,
        backend TEXT,
        model TEXT,
        answer TEXT NOT NULL,
        answered INTEGER NOT NULL,
        kind TEXT,
        coverage DOUBLE PRECISION,
        latency_ms DOUBLE PRECISION,
        category1 TEXT,
        category2 TEXT,
        category3 TEXT,
        trace TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS answers_created ON answers (created)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY,
        answer_id TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        channel TEXT,
        rating TEXT,
        correction TEXT,
        comment TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_answer ON feedback (answer_id)",
    "CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
]


class StoreError(DnfbotError):
    """The answer log cannot be read or written (locked, corrupted, unreachable)."""


def default_url(home: Path | None = None) -> str | None:
    """$DNFBOT_FEEDBACK_DB, else $DNFBOT_HOME/feedback.sqlite3; None when logging is switched off."""
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        return None if env.strip().lower() in OFF else env.strip()
    if home is None:
        from dnfbot.config import default_home

        home = default_home()
    return str(Path(home) / FILE_NAME)


def is_postgres(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def sqlite_path(url: str) -> Path:
    if url.startswith("sqlite:///"):  # SQLAlchemy's spelling: sqlite:///relative, sqlite:////absolute
        return Path(url[len("sqlite:///") :])
    if "://" in url:
        raise InputError(
            f"feedback database '{display(url)}': use a file path, sqlite:///PATH or postgresql://…"
        )
    return Path(url).expanduser()


def display(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Database:
    """A DB-API connection with the schema in place; `sql` takes `?` placeholders on every back end."""

    def __init__(self, url: str, *, create: bool = True, timeout_s: float = 2.0):
        self.url = url
        self.postgres = is_postgres(url)
        try:
            if self.postgres:
                self.conn = _connect_postgres(url, timeout_s)
                self.errors: tuple[type[BaseException], ...] = (_pg_error(),)
            else:
                self.errors = (sqlite3.Error,)
                self.conn = _connect_sqlite(sqlite_path(url), create, timeout_s)
            if create:
                self._schema()
        except self.errors as e:
            raise StoreError(f"feedback database {display(url)}: {one_line(e)}") from None
        except OSError as e:
            raise StoreError(f"feedback database {display(url)}: {e.strerror or e}") from None

    def _schema(self) -> None:
        cur = self.conn.cursor()
        for stmt in SCHEMA:
            cur.execute(stmt)
        cur.execute(self._q("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
                    ("schema_version", SCHEMA_VERSION))  # fmt: skip
        self.conn.commit()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def begin(self) -> None:
        # SQLite: take the write lock up front (a deferred transaction that reads first can fail to upgrade).
        if not self.postgres:
            self.conn.execute("BEGIN IMMEDIATE")

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self._q(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self.conn.cursor().executemany(self._q(sql), rows)

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        try:
            return self.execute(sql, params).fetchall()
        except self.errors as e:
            raise StoreError(f"feedback database {display(self.url)}: {one_line(e)}") from None

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection cannot roll back; it is replaced anyway
            self.conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def compact(self) -> None:
        """Give deleted rows' space (and text) back: VACUUM, and truncate SQLite's WAL."""
        if self.postgres:
            self.conn.commit()
            self.conn.autocommit = True
            self.conn.cursor().execute("VACUUM answers")
            self.conn.cursor().execute("VACUUM feedback")
            self.conn.autocommit = False
        else:
            self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _connect_sqlite(path: Path, create: bool, timeout_s: float) -> sqlite3.Connection:
    if not create and not path.exists():
        raise InputError(f"no feedback database at {path} (nothing has been logged yet)")
    if path.exists() and path.is_dir():
        raise InputError(f"feedback database {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (begin/commit), the same on both back ends.
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed feedback row survives a crash of the machine too; commits are batched, so it is cheap.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def _connect_postgres(url: str, timeout_s: float):
    try:
        import psycopg
    except ImportError:
        raise InputError(
            "a postgresql:// feedback database needs psycopg: pip install 'dnfbot[postgres]'"
        ) from None
    url = re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)
    return psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=False)


def _pg_error() -> type[BaseException]:
    import psycopg

    return psycopg.Error
