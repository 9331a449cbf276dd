"""Running the API: on a socket bound up front (port 0 → a free one), in one process or `--workers N` sharing it,
or in a background thread for tests (ServerThread)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict

from fastapi import FastAPI

from dnfbot.serve.guard import Limits

SPEC_ENV = "DNFBOT_SERVE_SPEC"  # how `--workers N` hands the server options to its worker processes


def bind_socket(host: str, port: int):
    """A listening socket, bound before uvicorn starts: port 0 picks a free port, and the real one is known."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(
    app, sock, *, access_log: bool = True, log_level: str = "info", workers: int = 1, spec: dict | None = None
) -> None:
    """Serve `app` on `sock`; with workers > 1, that many processes share the socket, each building its own app
    from `spec` (see app_from_env): one Python process uses one core at most (the GIL)."""
    import uvicorn

    common = {"access_log": access_log, "log_level": log_level, "timeout_graceful_shutdown": 5,
              **_limits_of(app).uvicorn_options()}  # fmt: skip
    if workers <= 1:
        uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[SPEC_ENV] = json.dumps(spec)  # spawned workers inherit it; it holds no secret
    # a worker opening the index on a busy machine can miss uvicorn's 5 s health ping and be killed in a loop
    config = uvicorn.Config(
        "dnfbot.serve.run:app_from_env",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=60,
        **common,
    )
    Multiprocess(config, sockets=[sock]).run()


def _limits_of(app) -> Limits:
    """The app's limits (create_app keeps them on app.state): uvicorn enforces the connection-level ones."""
    state = getattr(app, "state", None)
    return getattr(state, "limits", None) or Limits()


def worker_spec(backends: dict, limits: Limits, warm: bool, answer_log: str | None = None) -> dict:
    """What a worker process needs to rebuild the app: open_backends() arguments (JSON-able), limits, warm, and
    the answer log's URL (each worker writes through its own writer; SQLite serialises them)."""
    return {"backends": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in backends.items()},
            "limits": asdict(limits), "warm": warm, "answer_log": answer_log}  # fmt: skip


def app_from_env() -> FastAPI:
    """The app factory each `--workers N` process runs: opens the index itself from $DNFBOT_SERVE_SPEC; the API
    key comes from $DNFBOT_API_KEY, as in the parent."""
    from pathlib import Path

    from dnfbot.feedback.store import AnswerLog
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends

    spec = json.loads(os.environ[SPEC_ENV])
    args = dict(spec["backends"])
    for key in ("index_dir", "config"):
        args[key] = Path(args[key]) if args.get(key) else None
    return create_app(
        open_backends(**args),
        api_key=os.environ.get("DNFBOT_API_KEY") or None,
        limits=Limits(**spec["limits"]),
        warm=spec["warm"],
        answer_log=AnswerLog(spec["answer_log"]) if spec.get("answer_log") else None,
    )


class ServerThread:
    """uvicorn on a free loopback port in a background thread — for tests and embedding.

    with ServerThread(create_app(backends)) as url: httpx.get(url + "/healthz")"""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind_socket(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, access_log=False, log_level="warning", timeout_graceful_shutdown=2,
                                **_limits_of(app).uvicorn_options())  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
