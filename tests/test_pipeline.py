"""The whole pipeline through the real CLI on a tiny random-init model (scripts/pipeline_tiny.sh): every stage's
output is the next stage's input, so a broken contract between stages fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("trl")
pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_tiny_pipeline_end_to_end(tmp_path, guide_corpus_path, polyglot_tokenizer_dir):
    out = tmp_path / "run"
    env = dict(
        os.environ,
        DNFBOT=str(Path(sys.executable).parent / "dnfbot"),
        DNFBOT_SHARED=str(guide_corpus_path.parents[1]),
        OMP_NUM_THREADS="2",
    )
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "pipeline_tiny.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    synth, sft_data, rm_data, ppo_data, base, sft, rm, ppo, report, index, answer = lines

    assert synth["records"] > 50 and synth["records"] + synth["rejects"] == synth["processed"]
    assert sft_data["records"] == len((out / "sft.jsonl").read_text(encoding="utf-8").splitlines())
    assert rm_data["pairs"] == 3 * rm_data["ranking_records"]  # three pairs per ranked triple
    assert 0 < ppo_data["records"] <= 16
    assert base["arch"] == "gpt-neox" and base["vocab"] == 30003
    assert sft["last_loss"] < sft["first_loss"]
    assert rm["last_loss"] < rm["first_loss"] and rm["valid_accuracy"] > 0.5
    assert ppo["steps"] == 3 and ppo["reference_frozen"] and ppo["reference_shares_base"]
    assert all(Path(x).exists() for x in report["plots"])
    assert index["chunks"] > 600
    # The tiny model's words are noise, but the gate and the sources come from retrieval.
    assert answer["answered"] is True and answer["answer"].strip()
    assert answer["sources"] and all(s["doc_id"] and s["title"] for s in answer["sources"])
