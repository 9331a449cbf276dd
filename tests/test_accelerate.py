"""Multi-process training for real: `accelerate launch --multi_gpu --num_processes 2 -m dnfbot train sft …` on
the CPU (two processes, gloo, gradients all-reduced by DDP) follows the loss curve of a 1-process run of the same global batch,
and only rank 0 writes the run's files. The shipped accelerate configs (configs/accelerate/) load."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("accelerate")

from dnfbot.io import read_jsonl  # noqa: E402
from dnfbot.models import init_tiny  # noqa: E402
from support.launch import run_dnfbot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SFT = REPO / "tests" / "fixtures" / "train_sft.jsonl"
STEPS = 6
# the tiny model's own recipe (init_tiny's dnfbot_recipe.json: dropout off, LoRA everywhere, lr 1e-2) makes it
# learn; the run config only logs every step and keeps every record for training
CONFIG = """\
sft:
  valid_fraction: 0.0
  logging_steps: 1
  threads: 1
"""


def _sft(base: Path, out: Path, cfg: Path, *, processes: int, batch_size: int) -> subprocess.CompletedProcess:
    args = ["train", "sft", "--config", str(cfg), "--model", str(base), "--data", str(SFT)]
    args += ["--out", str(out), "--max-steps", str(STEPS), "--batch-size", str(batch_size), "--json"]
    return run_dnfbot(args, processes=processes)


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(polyglot_tokenizer_dir, tmp_path):
    base = init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path / "base")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    one = _sft(base, tmp_path / "one", cfg, processes=1, batch_size=4)
    two = _sft(base, tmp_path / "two", cfg, processes=2, batch_size=2)  # 2 x 2 = the same 4 examples a step

    summaries = [json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, two)]
    assert len(two.stdout.strip().splitlines()) == 1  # one summary for the run, not one per rank
    assert [s["steps"] for s in summaries] == [STEPS, STEPS]
    curves = [
        [r["loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl") if "loss" in r] for d in ("one", "two")
    ]
    assert len(curves[0]) == len(curves[1]) == STEPS  # rank 1 wrote no second set of records
    print("loss curves, 1 process x 4 / 2 processes x 2:", curves)
    assert curves[1] == pytest.approx(curves[0], rel=0.02), curves
    assert curves[0][-1] < curves[0][0] - 1.0  # and it is a curve: the model learns
    assert (tmp_path / "two" / "adapter_model.safetensors").exists()


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        c = load_config_from_file(str(path))
        kinds[path.stem] = (str(c.distributed_type), (c.deepspeed_config or {}).get("zero_stage"))
    assert kinds == {
        "ddp": ("DistributedType.MULTI_GPU", None),
        "fsdp": ("DistributedType.FSDP", None),
        "deepspeed-zero2": ("DistributedType.DEEPSPEED", 2),
        "deepspeed-zero3": ("DistributedType.DEEPSPEED", 3),
    }


def test_a_4bit_base_loads_onto_each_process_own_gpu(monkeypatch):
    from dnfbot.models import quantized_device_map

    for rank in ("0", "1", "3"):
        monkeypatch.setenv("LOCAL_RANK", rank)  # what accelerate launch / torchrun set for each process
        assert quantized_device_map() == {"": int(rank)}
