"""Verbs: `dnfbot serve` (HTTP API), `dnfbot ui` (web chat page), `dnfbot bench serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json
from dnfbot.commands import (
    AdapterOpt,
    BackendOpt,
    BaseUrlOpt,
    ConfigOpt,
    FourBitOpt,
    IndexDir,
    JsonOpt,
    ModelOpt,
    ModeOpt,
)

HostOpt = typer.Option(
    "127.0.0.1", "--host", help="address to bind; anything but loopback exposes the server"
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _gen_overrides(model, adapter, base_url, load_in_4bit) -> dict:
    return {"model": model, "adapter": adapter, "base_url": base_url, "load_in_4bit": load_in_4bit}


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("serve")
    def serve(
        host: str = HostOpt,
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 = any free port"),
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        mode: str = ModeOpt,
        backend: str = BackendOpt,
        model: str = ModelOpt,
        adapter: str = AdapterOpt,
        base_url: str = BaseUrlOpt,
        load_in_4bit: bool = FourBitOpt,
        workers: int = typer.Option(
            1, "--workers", min=1, help="processes sharing the port (about the cores); not for --backend hf"
        ),
        max_concurrent: int = typer.Option(
            32, "--max-concurrent", min=1, help="requests in flight per worker; more get 429"
        ),
        max_body_bytes: int = typer.Option(
            64 * 1024, "--max-body-bytes", min=1024, help="larger bodies get 413"
        ),
        max_tokens: int = typer.Option(
            4096, "--max-tokens", min=1, help="largest max_tokens a request may ask"
        ),
        cpu_threads: int = typer.Option(
            2, "--cpu-threads", min=1, help="threads for retrieval and extractive answers (about the cores)"
        ),
        warm: bool = typer.Option(
            False, "--warm/--no-warm", help="analyse every passage for the extractive back end at start-up"
        ),
        access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
        answer_log: bool = typer.Option(
            True, "--log/--no-log", help="log every answer for feedback ($DNFBOT_FEEDBACK_DB or $DNFBOT_HOME)"
        ),
        json_out: bool = typer.Option(False, "--json", help="print one JSON line {url, …} once listening"),
    ):
        """OpenAI-compatible HTTP API over the guide RAG (bearer key from $DNFBOT_API_KEY if set)."""
        from dnfbot.errors import InputError
        from dnfbot.serve.api import Limits, bind_socket, create_app, run_server, worker_spec
        from dnfbot.serve.backends import open_backends

        api_key = os.environ.get("DNFBOT_API_KEY") or None
        args = {"index_dir": index_dir, "config": config, "backend": backend, "mode": mode,
                **_gen_overrides(model, adapter, base_url, load_in_4bit)}  # fmt: skip
        backends = open_backends(**args)  # in the parent too: a bad index or back end fails here, in one line
        if workers > 1 and backends.default == "hf":
            raise InputError("--workers: the hf back end runs in one worker (each would load its own model)")
        limits = Limits(
            max_body_bytes=max_body_bytes,
            max_tokens=max_tokens,
            max_concurrent=max_concurrent,
            cpu_threads=cpu_threads,
        )
        from dnfbot.feedback.db import default_url, display
        from dnfbot.feedback.store import AnswerLog

        log_url = default_url(backends.get(None).settings.home) if answer_log else None
        # --workers N: each worker opens its own writer from the spec; the parent serves nothing.
        app_ = create_app(backends, api_key=api_key, limits=limits, warm=warm,
                          answer_log=AnswerLog(log_url) if log_url and workers <= 1 else None)  # fmt: skip
        sock = bind_socket(host, port)
        real_port = sock.getsockname()[1]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{real_port}"
        if host not in LOOPBACK and not api_key:
            console.print(
                f"[yellow]warning: listening on {host} without DNFBOT_API_KEY: anyone who can reach it can use it"
            )
        info = {"url": url, "backends": backends.names, "default": backends.default, "auth": bool(api_key),
                "workers": workers, "answer_log": display(log_url) if log_url else None}  # fmt: skip
        if json_out:
            emit_json(info)
        console.print(
            f"[green]dnfbot API[/] on {url}  (back ends: {', '.join(backends.names)}; "
            f"OpenAI base URL {url}/v1)"
        )
        spec = worker_spec(args, limits, warm, log_url) if workers > 1 else None
        run_server(app_, sock, access_log=access_log, workers=workers, spec=spec)

    @app.command("ui")
    def ui(
        host: str = HostOpt,
        port: int = typer.Option(8501, "--port", min=1, max=65535),
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        mode: str = ModeOpt,
        backend: str = BackendOpt,
        model: str = ModelOpt,
        adapter: str = AdapterOpt,
        base_url: str = BaseUrlOpt,
        load_in_4bit: bool = FourBitOpt,
        answer_log: bool = typer.Option(True, "--log/--no-log", help="log answers and show 👍/👎 and 고쳐 쓰기"),
        json_out: bool = typer.Option(False, "--json", help="print one JSON line {url} before starting"),
    ):
        """The web chat page (Streamlit): category pickers, streaming answers, sources."""
        import subprocess

        from dnfbot.commands import _index_dir, _settings
        from dnfbot.retrieval import store

        store.current_build(_index_dir(index_dir, _settings(config)))  # fail here, not in the browser
        page = Path(__file__).with_name("ui_app.py")
        args = []
        for flag, value in (
            ("--index-dir", index_dir),
            ("--config", config),
            ("--mode", mode),
            ("--backend", backend),
            ("--model", model),
            ("--adapter", adapter),
            ("--base-url", base_url),
        ):
            if value is not None:
                args += [flag, str(value)]
        if load_in_4bit:
            args.append("--4bit")
        if not answer_log:
            args.append("--no-log")
        cmd = [
            sys.executable, "-m", "streamlit", "run", str(page),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "viewer", "--", *args,
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

    @groups["bench"].command("serve")
    def bench_serve(
        index_dir: Path = IndexDir,
        corpus_paths: list[Path] = typer.Option(
            None, "--corpus", help="build a fresh index from this corpus (default: the live index)"
        ),
        queries: Path = typer.Option(Path("eval/dev.jsonl"), "--queries", help="questions to ask (JSONL)"),
        duration: float = typer.Option(60.0, "--duration", min=1.0, help="seconds of the /ask load run"),
        concurrency: int = typer.Option(16, "--concurrency", min=1, help="clients in the /ask run"),
        stream_clients: int = typer.Option(
            200, "--stream-clients", min=1, help="simultaneous streaming requests"
        ),
        workers: int = typer.Option(
            2, "--workers", min=1, help="server processes (dnfbot serve --workers; one per core)"
        ),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Throughput/latency of /ask, time to first token, and a burst of streams — over real HTTP."""
        from dnfbot.serve.bench import run_bench

        result = run_bench(
            index_dir=index_dir, corpus=[str(p) for p in corpus_paths] if corpus_paths else None,
            queries=queries, duration=duration, concurrency=concurrency, stream_clients=stream_clients,
            config=config, write=write, workers=workers,
        )  # fmt: skip
        if json_out:
            emit_json(result)
        else:
            console.print(result["markdown"])
