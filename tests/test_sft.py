"""SFT: answer-only loss, real training on a tiny model (loss falls, the answer is memorised and reloads), QLoRA
on CPU, resume after an interrupted run, merge, the CLI, plots and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from dnfbot.errors import InputError  # noqa: E402
from dnfbot.formats import model_prompt  # noqa: E402
from dnfbot.io import read_jsonl, write_jsonl  # noqa: E402
from dnfbot.models import init_tiny, load_model  # noqa: E402
from dnfbot.train.common import load_records  # noqa: E402
from dnfbot.train.sft import SFTOptions, build_dataset, make_trainer, merge_adapter, run_sft  # noqa: E402

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "train_sft.jsonl"
THREADS = 2
# No hidden settings: init_tiny writes the recipe a random-init model learns with (dnfbot_recipe.json: LM head and
# embeddings trained in full, LoRA on every linear layer, lr 1e-2) and load_options — what `dnfbot train sft`
# calls — applies it, exactly as for a user; real models keep the original LoRA-only defaults.
RUN = dict(threads=THREADS, valid_fraction=0.0, logging_steps=5)


def _opts(base: Path, **flags) -> SFTOptions:
    from dnfbot.train.options import load_options

    return load_options("sft", flags={"model": str(base), **RUN, **flags}, echo=False)


def _cli(args: list[str]):
    from typer.testing import CliRunner

    import dnfbot.cli as cli

    return CliRunner().invoke(cli.app, args)


def _greedy(model, tok, question: str) -> str:
    from dnfbot.generate.hf import DecodeOptions, generate_stream

    opts = DecodeOptions(num_beams=1, max_new_tokens=40, no_repeat_ngram_size=0)
    return "".join(generate_stream(model, tok, model_prompt(question), opts))


@pytest.fixture(scope="module")
def base(polyglot_tokenizer_dir, tmp_path_factory) -> Path:
    torch.set_num_threads(THREADS)
    return init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path_factory.mktemp("sft") / "base")


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft") / "run"
    summary = run_sft(
        str(base), FIXTURE, out, options=_opts(base, max_steps=40, limit=3, batch_size=3), echo=False
    )
    return out, summary


def test_loss_is_on_the_answer_tokens_only(base):
    model, tok = load_model(base)
    from dnfbot.models import add_lora

    recs = load_records(FIXTURE, ("prompt", "completion"), limit=2)
    trainer = make_trainer(add_lora(model), tok, build_dataset(recs), None, base.parent / "x", SFTOptions())
    ex = trainer.train_dataset[0]
    prompt_ids = tok(model_prompt(recs[0]["prompt"]))["input_ids"]
    answer_ids = tok(" " + recs[0]["completion"].strip())["input_ids"] + [tok.eos_token_id]
    # '### 질문: …\n\n### 답변:' + ' answer' + <|endoftext|>
    assert ex["input_ids"] == prompt_ids + answer_ids
    labels = ex["labels"]
    assert all(x == -100 for x in labels[: len(prompt_ids)])
    assert labels[len(prompt_ids) :] == answer_ids  # the eos is learnt: the model learns to stop


def test_packing_puts_examples_in_one_row_without_cross_attention(base):
    from dnfbot.models import add_lora

    model, tok = load_model(base)
    recs = load_records(FIXTURE, ("prompt", "completion"), limit=4)
    trainer = make_trainer(
        add_lora(model),
        tok,
        build_dataset(recs),
        None,
        base.parent / "p",
        SFTOptions(packing=True, max_length=256, batch_size=1),
    )
    rows = list(trainer.train_dataset)
    assert len(rows) == 1 and len(rows[0]["seq_lengths"]) == 4  # all four examples share one 256-token row
    batch = trainer.data_collator([rows[0]])
    assert "attention_mask" not in batch  # padding-free: positions restart at 0 at each example
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist()
    assert len(starts) == 4 and starts[0] == 0
    # the model sees each example as if it were alone (the block-diagonal mask transformers derives from the
    # position ids; TRL trains with use_cache=False, which that needs)
    a, b = starts[1], starts[2]
    with torch.no_grad():
        packed = trainer.model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        )
        alone = trainer.model(input_ids=batch["input_ids"][:, a:b], use_cache=False)
    assert torch.allclose(packed.logits[0, a:b], alone.logits[0], atol=1e-4)


def test_sft_loss_falls_and_the_reloaded_adapter_reproduces_a_training_answer(base, trained):
    out, s = trained
    assert s["steps"] == 40 and s["train_records"] == 3
    assert s["last_loss"] < 0.3 * s["first_loss"], (s["first_loss"], s["last_loss"])
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "README.md",
        "summary.json",
    ):
        assert (out / name).exists(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # safetensors only in the finished run
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "lora_r" in card and "last_loss" in card
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics if "loss" in r][:2] == [1, 5] and metrics[-1]["step"] == 40
    # fresh process state: base + adapter from disk, greedy decoding gives back the memorised answer
    model, tok = load_model(base, adapter=out)
    rec = load_records(FIXTURE, ("prompt", "completion"), limit=3)[1]
    question = rec["prompt"].split("### 질문:")[1].split("### 답변")[0].strip()
    assert _greedy(model, tok, question) == rec["completion"].strip()


def test_merge_gives_the_same_model_as_base_plus_adapter(base, trained, tmp_path):
    out, _ = trained
    res = merge_adapter(str(base), out, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists() and res["params"] > 0
    merged, tok = load_model(tmp_path / "merged")
    peft_model, _ = load_model(base, adapter=out)
    ids = tok(model_prompt("피로도는 언제 회복되나요?"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
    with pytest.raises(InputError, match="not empty"):
        merge_adapter(str(base), out, tmp_path / "merged")


def test_resume_after_an_interrupted_run_continues_from_the_checkpoint(base, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt  # like Ctrl-C / a kill after checkpoint-4 was written

    opts = _opts(base, max_steps=6, save_steps=2, limit=4, batch_size=2, logging_steps=1)
    with pytest.raises(KeyboardInterrupt):
        run_sft(str(base), FIXTURE, tmp_path, options=opts, callbacks=[Kill()], echo=False)
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    with pytest.raises(InputError, match="--resume"):  # never silently mixes two runs
        run_sft(str(base), FIXTURE, tmp_path, options=opts, echo=False)
    s = run_sft(str(base), FIXTURE, tmp_path, options=opts, resume=True, echo=False)
    assert s["resumed_from_step"] == 4 and s["steps"] == 6
    events = read_jsonl(tmp_path / "metrics.jsonl")
    assert {"event": "resume", "step": 4}.items() <= next(
        e for e in events if e.get("event") == "resume"
    ).items()
    steps_after = [
        e["step"]
        for e in events[events.index(next(e for e in events if e.get("event") == "resume")) :]
        if "loss" in e
    ]
    assert steps_after == [5, 6]  # continued, not restarted


def test_qlora_4bit_trains_on_cpu(polyglot_tokenizer_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    llama = init_tiny("llama", polyglot_tokenizer_dir, tmp_path / "llama")
    # the recipe's lr; the Llama default targets and only the LM head in full (the 4-bit path under test)
    opts = _opts(
        llama, max_steps=8, limit=4, batch_size=4, load_in_4bit=True, logging_steps=1,
        lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"], lora_modules_to_save=["lm_head"],
    )  # fmt: skip
    s = run_sft(str(llama), FIXTURE, tmp_path / "run", options=opts, echo=False)
    assert s["load_in_4bit"] and s["steps"] == 8
    assert s["last_loss"] < s["first_loss"] - 1.0, (s["first_loss"], s["last_loss"])
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}  # EEVE/Llama defaults


def test_bad_input_is_a_clear_error(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "q", "completion": "a"}, {"prompt": "q2"}])
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing or empty field 'completion'"):
        run_sft(str(base), bad, tmp_path / "o1", options=SFTOptions(max_steps=1), echo=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty dataset"):
        run_sft(str(base), empty, tmp_path / "o2", options=SFTOptions(max_steps=1), echo=False)
    with pytest.raises(InputError, match="does not exist"):
        run_sft(
            str(tmp_path / "no-model"), FIXTURE, tmp_path / "o3", options=SFTOptions(max_steps=1), echo=False
        )
    # {"question","answer"} records are accepted as prompt/completion
    qa = tmp_path / "qa.jsonl"
    write_jsonl(qa, [{"question": "피로도는?", "answer": "매일 회복됩니다."}])
    assert load_records(qa, ("prompt", "completion"))[0]["completion"] == "매일 회복됩니다."


def test_cli_train_sft_generate_plot(base, trained, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model: {base}\nlora:\n  r: 4\nsft:\n  batch_size: 2\n  logging_steps: 1\n  threads: {THREADS}\n"
    )
    res = _cli(
        [
            "train",
            "sft",
            "--config",
            str(cfg),
            "--data",
            str(FIXTURE),
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--limit",
            "4",
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["steps"] == 2 and s["first_loss"] is not None and s["last_loss"] is not None
    assert "eval_loss" in s and s["output_dir"] == str(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["r"] == 4  # YAML lora section

    out, _ = trained
    rec = load_records(FIXTURE, ("prompt", "completion"), limit=3)[0]
    question = rec["prompt"].split("### 질문:")[1].split("### 답변")[0].strip()
    res = _cli(
        [
            "generate",
            "--model",
            str(base),
            "--adapter",
            str(out),
            "--num-beams",
            "1",
            "--no-repeat-ngram-size",
            "0",
            question,
            "--json",
        ]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["answer"] == rec["completion"].strip()

    res = _cli(["plot", "metrics", str(out), "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(p["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "loss" in p["series"]

    bad = _cli(
        [
            "train",
            "sft",
            "--model",
            str(tmp_path / "missing"),
            "--data",
            str(FIXTURE),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert bad.exit_code != 0 and "does not exist" in str(bad.exception)
