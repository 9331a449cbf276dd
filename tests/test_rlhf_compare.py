"""`dnfbot report rlhf --run A --compare B`: two RLHF runs on the same held-out prompts side by side — the gain in
starting-reward standard deviations, KL, updates — and their curves overlaid (fast: hand-written run dirs)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from typer.testing import CliRunner  # noqa: E402

from dnfbot.cli import app, main  # noqa: E402


def _run(root: Path, name: str, algo: str, before: list[float], after: list[float], kl: float) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algo": algo}), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"elapsed_s": 12.5}), encoding="utf-8")
    for file, rewards, k in (("eval_before.jsonl", before, 0.0), ("eval_after.jsonl", after, kl)):
        rows = [
            {
                "prompt": f"q{i}",
                "response": "r",
                "reward": r,
                "kl": k,
                "length": 10 + i,
                "has_eos": i % 2 == 0,
            }
            for i, r in enumerate(rewards)
        ]
        (run / file).write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    steps = [
        {"step": s, "reward": before[0] + s, "kl": kl * s / 3, "optimizer_updates": 8} for s in (1, 2, 3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps), encoding="utf-8")
    return run


def test_compare_two_runs_in_one_table_and_overlaid_curves(tmp_path):
    before = [-2.0, -1.0, 0.0, 1.0]
    ppo = _run(tmp_path, "ppo", "ppo", before, [-1.0, 0.0, 1.0, 2.0], kl=4.0)
    rloo = _run(tmp_path, "rloo", "rloo", before, [-2.0, -1.0, 0.5, 1.0], kl=9.0)
    res = CliRunner().invoke(
        app, ["report", "rlhf", "--run", str(ppo), "--compare", str(rloo), "--json"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = {r["label"]: r for r in out["runs"]}
    std = statistics.pstdev(before)
    assert rows["ppo (ppo)"]["gain_std"] == pytest.approx(1.0 / std)
    assert rows["rloo (rloo)"]["gain_std"] == pytest.approx(0.125 / std)
    assert (rows["ppo (ppo)"]["improved"], rows["rloo (rloo)"]["improved"]) == (4, 1)
    assert rows["rloo (rloo)"]["mean_kl"] == 9.0 and rows["ppo (ppo)"]["optimizer_updates"] == 24
    md = Path(out["report"]).read_text(encoding="utf-8")
    assert "| ppo (ppo) | -0.500 → +0.500 |" in md and "rloo (rloo)" in md
    assert {Path(p).name for p in out["plots"]} == {"compare_reward.png", "compare_kl.png"}
    assert all(Path(p).stat().st_size > 1000 for p in out["plots"])


def test_compare_refuses_a_directory_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    ppo = _run(tmp_path, "ppo", "ppo", [0.0, 1.0], [1.0, 2.0], kl=1.0)
    monkeypatch.setattr(
        sys, "argv", ["dnfbot", "report", "rlhf", "--run", str(ppo), "--compare", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as e:
        main()  # the console script's error boundary: one line, exit 2
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'eval_before.jsonl'}: missing — is {tmp_path} a finished `dnfbot train ppo` run?"
    ]
