"""Top-level verbs that serve: `dnfbot serve` (HTTP API) and `dnfbot ui` (web chat page)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from dnfbot.cli.options import AnswerFlags, as_flags, pick, with_options
from dnfbot.serve.guard import Limits

commands = typer.Typer()
HOST = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback exposes the server")


@commands.command("serve")
@with_options(AnswerFlags, Limits)
def serve(
    host: str = HOST,
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 = any free port"),
    workers: int = typer.Option(
        1, "--workers", min=1, help="processes sharing the port (about the cores); not for --backend hf"
    ),
    warm: bool = typer.Option(
        False, "--warm/--no-warm", help="analyse every passage for the extractive back end at start-up"
    ),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
    answer_log: bool = typer.Option(
        True, "--log/--no-log", help="log every answer for feedback ($DNFBOT_FEEDBACK_DB or $DNFBOT_HOME)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line {url, …} once listening"),
    options: dict = None,
):
    """OpenAI-compatible HTTP API over the guide RAG (bearer key from $DNFBOT_API_KEY if set)."""
    from dnfbot.console import console, emit_json
    from dnfbot.errors import InputError
    from dnfbot.feedback.db import default_url, display
    from dnfbot.feedback.store import AnswerLog
    from dnfbot.generate.endpoints import is_loopback
    from dnfbot.options import build
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends
    from dnfbot.serve.run import bind_socket, run_server, worker_spec

    api_key = os.environ.get("DNFBOT_API_KEY") or None
    limits = build(Limits, pick(options, Limits), "flags")
    args = pick(options, AnswerFlags)
    backends = open_backends(**args)  # in the parent too: a bad index or back end fails here, in one line
    if workers > 1 and backends.default == "hf":
        raise InputError("--workers: the hf back end runs in one worker (each would load its own model)")
    log_url = default_url(backends.get(None).settings.home) if answer_log else None
    # --workers N: each worker opens its own writer from the spec; the parent serves nothing.
    app_ = create_app(backends, api_key=api_key, limits=limits, warm=warm,
                      answer_log=AnswerLog(log_url) if log_url and workers <= 1 else None)  # fmt: skip
    sock = bind_socket(host, port)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}"
    if not is_loopback(host) and not api_key:
        console.print(
            f"[yellow]warning: listening on {host} without DNFBOT_API_KEY: anyone who can reach it can use it"
        )
    info = {"url": url, "backends": backends.names, "default": backends.default, "auth": bool(api_key),
            "workers": workers, "answer_log": display(log_url) if log_url else None}  # fmt: skip
    if json_out:
        emit_json(info)
    console.print(
        f"[green]dnfbot API[/] on {url}  (back ends: {', '.join(backends.names)}; OpenAI base URL {url}/v1)"
    )
    spec = worker_spec(args, limits, warm, log_url) if workers > 1 else None
    run_server(app_, sock, access_log=access_log, workers=workers, spec=spec)


@commands.command("ui")
@with_options(AnswerFlags)
def ui(
    host: str = HOST,
    port: int = typer.Option(8501, "--port", min=1, max=65535),
    answer_log: bool = typer.Option(True, "--log/--no-log", help="log answers and show 👍/👎 and 고쳐 쓰기"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON line {url} before starting"),
    options: dict = None,
):
    """The web chat page (Streamlit): category pickers, streaming answers, sources."""
    import subprocess

    from dnfbot.config import load_settings
    from dnfbot.console import console, emit_json
    from dnfbot.retrieval import store

    settings = load_settings(options.get("config"))
    store.current_build(settings.resolve_index_dir(options.get("index_dir")))  # fail here, not in the browser
    page = Path(__file__).resolve().parents[1] / "serve" / "ui_app.py"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(page),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false", "--client.toolbarMode", "viewer",
        "--", *as_flags(options, AnswerFlags), *([] if answer_log else ["--no-log"]),
    ]  # fmt: skip
    url = f"http://{host}:{port}"
    if json_out:
        emit_json({"url": url})
    console.print(f"[green]dnfbot web chat[/] on {url}")
    sys.stdout.flush()
    sys.stderr.flush()
    # Become Streamlit: signals (Ctrl-C, SIGTERM from a supervisor) reach it directly.
    if os.name == "posix":
        os.execv(sys.executable, cmd)
    raise typer.Exit(subprocess.call(cmd))
