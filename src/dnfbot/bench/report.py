"""docs/benchmarks.md is shared by every benchmark: each owns one marked section and rewrites only that."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

from dnfbot.io import atomic_write_text

DEFAULT_PATH = Path("docs/benchmarks.md")
HEADER = "# Benchmarks\n\nEach section is rewritten by the command named in it. Machine facts are recorded per run.\n"


def machine_line() -> str:
    # The 1-minute load average says whether other work shared the cores during the run.
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores{load}, "
        f"Python {platform.python_version()}"
    )


def update_section(name: str, markdown: str, path: str | Path = DEFAULT_PATH) -> Path:
    """Replace (or append) the section `name` in the benchmarks file, atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"<!-- bench:{name} -->\n{markdown.rstrip()}\n\n_Recorded {stamp} on {machine_line()}._\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    atomic_write_text(path, text)
    return path
