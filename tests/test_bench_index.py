"""`dnfbot bench index`: synthetic corpora of the right size, one child process per case, a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnfbot.bench.index_scale import make_long_article, make_scaled_corpus, parse_numbers, run_scale_bench
from dnfbot.config import Settings
from dnfbot.corpus import load_corpus
from dnfbot.errors import InputError

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"


def test_synthetic_corpora_scale_characters_and_article_length(tmp_path):
    docs, _ = load_corpus([MINI])
    one = make_scaled_corpus(docs, 1, tmp_path / "1.jsonl")
    three = make_scaled_corpus(docs, 3, tmp_path / "3.jsonl")
    assert one["documents"] == three["documents"] == len(docs)
    assert three["chars"] == 3 * one["chars"] + 2 * 2 * len(docs)  # + the blank lines that join them
    recs = [json.loads(line) for line in (tmp_path / "3.jsonl").read_text(encoding="utf-8").splitlines()]
    assert recs[0]["text"].startswith(docs[0].text) and docs[1].text in recs[0]["text"]
    long = make_long_article(docs, 0.05, tmp_path / "long.jsonl")
    assert long["documents"] == 1 and 49_000 < long["bytes"] <= 50_000


def test_run_builds_each_case_in_a_child_and_reports_cost_per_character():
    r = run_scale_bench([str(MINI)], Settings(), factors=[1, 4], write=False)
    rows = r["results"]
    assert [x["case"] for x in rows] == ["1×", "4×"] and all("error" not in x for x in rows)
    assert rows[0]["cost_per_char_vs_first"] == 1.0 and rows[1]["chars"] > 4 * rows[0]["chars"]
    assert all(x["peak_rss_mb"] > 50 and x["cpu_s"] > 0 for x in rows)
    assert "| 4× |" in r["markdown"]


def test_numbers_option_is_checked():
    assert parse_numbers("1, 10,100", "--factors") == [1.0, 10.0, 100.0]
    for bad in ("a,b", "0", "-1", "nan"):
        with pytest.raises(InputError, match="--factors"):
            parse_numbers(bad, "--factors")
