"""`dnfbot feedback stats | export | purge`: the answer log and the players' feedback (see docs/feedback.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import JSON, IndexFlags, show, with_options

feedback = typer.Typer(no_args_is_help=True)

DB = typer.Option(
    None, "--db", help="answer log: a SQLite path or postgresql://… (default $DNFBOT_FEEDBACK_DB, else "
    "$DNFBOT_HOME/feedback.sqlite3)"
)  # fmt: skip


@feedback.command("stats")
def stats(
    db: str = DB,
    png: Path = typer.Option(None, "--png", help="also draw the chart to this PNG file"),
    top: int = typer.Option(10, "--top", min=1, max=1000, help="questions listed per table"),
    json_out: bool = JSON,
):
    """Counts, refusal rate, down-rate by category/board/back end, most refused and most downvoted questions."""
    from dnfbot.console import console, out
    from dnfbot.feedback.stats import compute, plot, to_text
    from dnfbot.feedback.store import open_db

    conn = open_db(db)
    try:
        s = compute(conn, top)
    finally:
        conn.close()
    if png:
        s["png"] = str(plot(s, png))

    def human(s: dict) -> None:
        out.print(to_text(s), markup=False, highlight=False)
        if png:
            console.print(f"chart: {s['png']}")

    show(s, json_out, human)


@feedback.command("export")
@with_options(IndexFlags)
def export(
    as_: str = typer.Option(..., "--as", help="rm | dpo | sft | pairs | eval"),
    out_path: Path = typer.Option(..., "--out", help="JSONL file to write"),
    db: str = DB,
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="share of question groups held out"),
    dedup_threshold: float = typer.Option(
        0.9, "--dedup-threshold", help="trigram Jaccard at which two questions are one (>1: exact only)"
    ),
    json_out: bool = JSON,
    options: dict = None,
):
    """Training/eval data from the players' feedback (--index-dir: the passages of --as pairs)."""
    from dnfbot.console import console
    from dnfbot.errors import InputError
    from dnfbot.feedback.export import export as run_export
    from dnfbot.feedback.store import open_db

    if out_path.is_dir():
        raise InputError(f"--out {out_path}: is a directory")
    index = None
    if as_ == "pairs":
        from dnfbot.config import load_settings
        from dnfbot.retrieval.index import open_index

        settings = load_settings(options.get("config"))
        index, _ = open_index(settings.resolve_index_dir(options.get("index_dir")), settings)
    conn = open_db(db)
    try:
        r = run_export(conn, as_, out_path, index=index, valid_fraction=valid_fraction,
                       dedup_threshold=dedup_threshold)  # fmt: skip
    finally:
        conn.close()
    show(r, json_out, lambda r: console.print(
        f"[green]{r['records']}[/] {as_} records → {r['out']} (train {r['train']}, valid {r['valid']})"))  # fmt: skip


@feedback.command("purge")
def purge(
    before: str = typer.Option(
        ..., "--before", help="delete what was logged before: 2025-01-31, ISO time, 30d"
    ),
    db: str = DB,
    dry_run: bool = typer.Option(False, "--dry-run", help="count only"),
    json_out: bool = JSON,
):
    """Delete answers and feedback older than a date (and compact the file, so the text is gone)."""
    import datetime as dt

    from dnfbot.console import console
    from dnfbot.feedback.store import open_db, parse_before
    from dnfbot.feedback.store import purge as run_purge

    ts = parse_before(before)
    conn = open_db(db)
    try:
        r = run_purge(conn, ts, dry_run)
    finally:
        conn.close()
    r["before"] = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
    verb = "would delete" if dry_run else "deleted"
    show(r, json_out, lambda r: console.print(
        f"{verb} {r['answers']} answers and {r['feedback']} feedback rows from before {r['before']}"))  # fmt: skip
