"""Run `python -m dnfbot …` as 1 process or N processes under `accelerate launch` on the CPU (gloo), the way the
multi-process tests compare them (tests/test_accelerate.py, tests/test_ppo_processes.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dnfbot(args: list[str], *, processes: int, timeout: int = 900) -> subprocess.CompletedProcess:
    """`dnfbot ARGS` in a subprocess (one torch thread, GPUs hidden so it is the CPU test on a GPU box too);
    with processes > 1 through `accelerate launch --multi_gpu`, which without GPUs starts N processes (torchrun)
    that meet over gloo (`--cpu` would mean one). Fails the test unless it exits 0."""
    cmd = [sys.executable, "-m", "dnfbot", *args]
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        launch += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
        launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
        cmd = launch + cmd[1:]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    return res
