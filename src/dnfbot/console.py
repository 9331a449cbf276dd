"""The terminal: human output on stdout (`out`), progress and messages on stderr (`console`), `--json` lines.

Any layer may report progress on stderr; stdout stays clean for `--json` consumers."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True)
out = Console()


def emit_json(obj: Any) -> None:
    """One JSON document (or line) on stdout, UTF-8, no ASCII escaping of Korean."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def progress(**kwargs: Any):
    """A rich progress bar on stderr (quiet when stderr is not a terminal and disable=True is passed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        **kwargs,
    )
