"""`dnfbot serve` / `dnfbot ui` as a user starts them: real processes, --json first line, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("httpx")
pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("uvicorn")

import httpx

from dnfbot.cli import app
from support.guide_index import mini_index


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:

    return mini_index(tmp_path_factory.mktemp("serve_cli"))


def _start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "dnfbot", "serve", "--port", "0", "--json", "--no-access-log", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _healthy(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url + "/healthz", timeout=2).json()
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.1)


def test_serve_prints_json_binds_loopback_and_uses_the_env_key(index_dir):
    key = "cli-test-key-9876"
    proc, info = _start("--index-dir", str(index_dir), "--max-concurrent", "4", env={"DNFBOT_API_KEY": key})
    try:
        assert info["url"].startswith("http://127.0.0.1:") and info["auth"] is True
        assert info["backends"] == ["extractive"] and info["default"] == "extractive"
        health = _healthy(info["url"])
        assert health["max_concurrent"] == 4 and health["chunks"] == 6
        assert httpx.post(info["url"] + "/ask", json={"question": "더스크 피로도"}).status_code == 401
        r = httpx.post(
            info["url"] + "/ask",
            json={"question": "더스크 피로도"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.json()["answered"]
    finally:
        err = _stop(proc)
    assert key not in err  # never logged


def test_serve_warns_when_exposed_without_a_key(index_dir):
    proc, info = _start("--index-dir", str(index_dir), "--host", "0.0.0.0")
    try:
        assert info["auth"] is False and info["url"].startswith("http://0.0.0.0:")
        _healthy(info["url"].replace("0.0.0.0", "127.0.0.1"))
    finally:
        err = _stop(proc)
    assert "without DNFBOT_API_KEY" in err


def test_workers_share_the_port_and_stop_together(index_dir):
    """--workers 2: two processes answer on one port (each opened the index itself); Ctrl-C stops them all."""
    proc, info = _start("--index-dir", str(index_dir), "--workers", "2")
    try:
        assert info["workers"] == 2
        pids: set[int] = set()
        deadline = time.monotonic() + 90
        while len(pids) < 2:  # fresh connections land on either worker once both are up
            assert time.monotonic() < deadline and proc.poll() is None, "both workers never answered"
            pids.add(_healthy(info["url"])["pid"])
            time.sleep(0.05)
        assert proc.pid not in pids
        r = httpx.post(info["url"] + "/ask", json={"question": "더스크 피로도 얼마나 들어?"})
        assert r.status_code == 200 and r.json()["answered"]
    finally:
        err = _stop(proc)
    assert proc.returncode == 0 and "Stopping parent process" in err
    for pid in pids:  # no worker left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_missing_index_or_bad_backend_is_a_one_line_error(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["ui", "--index-dir", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and isinstance(r.exception, Exception)
    p = subprocess.run(
        [sys.executable, "-m", "dnfbot", "serve", "--index-dir", str(tmp_path / "nothing"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
