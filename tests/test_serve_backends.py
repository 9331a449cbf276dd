"""The server's cached extractive back end chooses exactly what the plain one does, and Backends wiring."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dnfbot.config import Settings
from dnfbot.generate.extractive import ExtractiveGenerator
from dnfbot.io import iter_jsonl
from dnfbot.retrieval.index import build_index
from dnfbot.serve.backends import CachedExtractiveGenerator, open_backends

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
DEV = Path(__file__).resolve().parents[1] / "eval" / "dev.jsonl"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_backends")
    shutil.copy(MINI, root / "guide.json")
    build_index([root / "guide.json"], root / "index", Settings(home=root))
    return root / "index"


def test_cached_generator_matches_the_plain_one(index_dir):
    b = open_backends(index_dir)
    rag = b.get("extractive")
    cached = rag.generator
    assert (
        isinstance(cached, CachedExtractiveGenerator)
        and b.names == ["extractive"]
        and b.default == "extractive"
    )
    plain = ExtractiveGenerator(rag.settings.answer.max_sentences, rag.index.tokenizer)
    questions = [r["question"] for r in iter_jsonl(DEV)][:40] if DEV.exists() else []
    questions += [
        "더스크 피로도 얼마나 들어?",
        "무의 장막 신수 추천",
        "어둑섬 보상은 몇 골드?",
        "커스텀 출혈 세팅",
    ]
    compared = 0
    for q in questions:
        _, _, _, request = rag.prepare(q)
        if not request.passages:
            continue
        assert cached.select(request) == plain.select(request), q
        assert cached.generate(request) == plain.generate(request)
        compared += 1
    assert compared >= 4
    assert cached.cached() > 0
    before = cached.cached()
    assert b.warm() >= 0 and cached.cached() == len(rag.index.chunks) >= before


def test_cache_is_bounded(index_dir):
    b = open_backends(index_dir)
    gen = CachedExtractiveGenerator(3, b.get(None).index.tokenizer, max_entries=4)
    gen.warm([f"문장 {i}입니다. 다음 문장 {i}." for i in range(10)], batch=3)
    assert 0 < gen.cached() <= 4
