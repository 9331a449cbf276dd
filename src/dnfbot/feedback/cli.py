"""Verbs: `dnfbot feedback stats | export | purge` and `dnfbot bench feedback`."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out
from dnfbot.errors import InputError

DbOpt = typer.Option(
    None, "--db", help="answer log: a SQLite path or postgresql://… (default $DNFBOT_FEEDBACK_DB, else "
    "$DNFBOT_HOME/feedback.sqlite3)"
)  # fmt: skip
JsonOpt = typer.Option(False, "--json", help="machine-readable output on stdout")


def parse_before(text: str) -> float:
    """'2025-01-31' (UTC midnight), an ISO date-time, or '30d' (30 days ago) → epoch seconds."""
    s = text.strip()
    m = re.fullmatch(r"(\d+)d", s)
    if m:
        return (dt.datetime.now(dt.UTC) - dt.timedelta(days=int(m.group(1)))).timestamp()
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise InputError(f"--before {text!r}: give a date (2025-01-31), a date-time (2025-01-31T12:00) or 30d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    fb = typer.Typer(help="The answer log and players' feedback: stats, training/eval exports, purge.",
                     no_args_is_help=True)  # fmt: skip
    app.add_typer(fb, name="feedback")

    @fb.command("stats")
    def stats(
        db: str = DbOpt,
        png: Path = typer.Option(None, "--png", help="also draw the chart to this PNG file"),
        top: int = typer.Option(10, "--top", min=1, max=1000, help="questions listed per table"),
        json_out: bool = JsonOpt,
    ):
        """Counts, refusal rate, down-rate by category/board/back end, most refused and most downvoted questions."""
        from dnfbot.feedback.stats import compute, plot, to_text
        from dnfbot.feedback.store import open_db

        conn = open_db(db)
        try:
            s = compute(conn, top)
        finally:
            conn.close()
        if png:
            s["png"] = str(plot(s, png))
        if json_out:
            emit_json(s)
        else:
            out.print(to_text(s), markup=False, highlight=False)
            if png:
                console.print(f"chart: {s['png']}")

    @fb.command("export")
    def export(
        as_: str = typer.Option(..., "--as", help="rm | dpo | sft | pairs | eval"),
        out_path: Path = typer.Option(..., "--out", help="JSONL file to write"),
        db: str = DbOpt,
        index_dir: Path = typer.Option(None, "--index-dir", help="index to read passages from (--as pairs)"),
        config: Path = typer.Option(None, "--config", help="YAML settings file"),
        valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="share of question groups held out"),
        dedup_threshold: float = typer.Option(
            0.9, "--dedup-threshold", help="trigram Jaccard at which two questions are one (>1: exact only)"
        ),
        json_out: bool = JsonOpt,
    ):
        """Training/eval data from the players' feedback (see docs/feedback.md)."""
        from dnfbot.feedback.export import export as run_export
        from dnfbot.feedback.store import open_db

        if out_path.exists() and out_path.is_dir():
            raise InputError(f"--out {out_path}: is a directory")
        index = None
        if as_ == "pairs":
            from dnfbot.commands import _index_dir, _settings
            from dnfbot.retrieval.index import open_index

            settings = _settings(config)
            index, _ = open_index(_index_dir(index_dir, settings), settings)
        conn = open_db(db)
        try:
            r = run_export(conn, as_, out_path, index=index, valid_fraction=valid_fraction,
                           dedup_threshold=dedup_threshold)  # fmt: skip
        finally:
            conn.close()
        if json_out:
            emit_json(r)
        else:
            console.print(f"[green]{r['records']}[/] {as_} records → {r['out']} (train {r['train']}, valid {r['valid']})")

    @fb.command("purge")
    def purge(
        before: str = typer.Option(..., "--before", help="delete what was logged before: 2025-01-31, ISO time, 30d"),
        db: str = DbOpt,
        dry_run: bool = typer.Option(False, "--dry-run", help="count only"),
        json_out: bool = JsonOpt,
    ):
        """Delete answers and feedback older than a date (and compact the file, so the text is gone)."""
        from dnfbot.feedback.store import open_db
        from dnfbot.feedback.store import purge as run_purge

        ts = parse_before(before)
        conn = open_db(db)
        try:
            r = run_purge(conn, ts, dry_run)
        finally:
            conn.close()
        r["before"] = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
        if json_out:
            emit_json(r)
        else:
            verb = "would delete" if dry_run else "deleted"
            console.print(f"{verb} {r['answers']} answers and {r['feedback']} feedback rows from before {r['before']}")

    @groups["bench"].command("feedback")
    def bench_feedback(
        index_dir: Path = typer.Option(None, "--index-dir", help="index to serve (default: the live index)"),
        queries: Path = typer.Option(Path("eval/dev.jsonl"), "--queries", help="questions for the /ask load"),
        duration: float = typer.Option(30.0, "--duration", min=1.0, help="seconds of each run"),
        rate: float = typer.Option(200.0, "--rate", min=1.0, help="feedback POSTs per second"),
        ask_rate: float = typer.Option(100.0, "--ask-rate", min=1.0, help="/ask requests per second alongside"),
        seq_duration: float = typer.Option(15.0, "--seq-duration", min=1.0, help="seconds of each log-cost run"),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        json_out: bool = JsonOpt,
    ):
        """Feedback POSTs under /ask load (lost / duplicated / /ask p95) and the answer log's cost on /ask."""
        from dnfbot.feedback.bench import run_bench

        r = run_bench(index_dir=index_dir, queries=queries, duration=duration, rate=rate, ask_rate=ask_rate,
                      seq_duration=seq_duration, write=write)  # fmt: skip
        if json_out:
            emit_json(r)
        else:
            out.print(r["markdown"])
