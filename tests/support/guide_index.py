"""The mini guide (tests/fixtures/mini_guide.json) indexed in a folder: what most serving tests answer from."""

from __future__ import annotations

import shutil
from pathlib import Path

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "mini_guide.json"


def mini_index(root: Path) -> Path:
    """Copy the mini guide to root/guide.json and build its index at root/index (settings home = root)."""
    from dnfbot.config import Settings
    from dnfbot.retrieval.index import build_index

    root = Path(root)
    shutil.copy(MINI, root / "guide.json")
    build_index([root / "guide.json"], root / "index", Settings(home=root))
    return root / "index"
