"""models.py: tiny real-architecture models, the one loader, LoRA defaults, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from dnfbot.errors import InputError  # noqa: E402
from dnfbot.models import (  # noqa: E402
    add_lora,
    count_parameters,
    default_lora_config,
    init_tiny,
    load_model,
    load_tokenizer,
    lora_target_modules,
)


@pytest.fixture(scope="module")
def tiny_models(polyglot_tokenizer_dir, tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("models")
    return {arch: init_tiny(arch, polyglot_tokenizer_dir, root / arch) for arch in ("gpt-neox", "llama")}


@pytest.mark.parametrize(
    "arch,model_type,cls",
    [("gpt-neox", "gpt_neox", "GPTNeoXForCausalLM"), ("llama", "llama", "LlamaForCausalLM")],
)
def test_init_tiny_is_the_real_architecture_with_the_real_tokenizer(tiny_models, arch, model_type, cls):
    path = tiny_models[arch]
    assert (path / "model.safetensors").exists()
    assert not list(path.glob("*.bin"))  # safetensors only
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["architectures"] == [cls]
    assert cfg["vocab_size"] == 30080  # 30,003 tokens padded to a multiple of 128, as polyglot-ko does
    model, tok = load_model(path)
    assert type(model).__name__ == cls
    assert len(tok) == 30003 and tok.eos_token == "<|endoftext|>" and tok.pad_token == tok.eos_token
    assert model.config.pad_token_id == tok.pad_token_id
    _, total = count_parameters(model)
    assert 2_000_000 < total < 8_000_000  # "tiny": mostly the two 30k-row embedding matrices
    assert lora_target_modules(model.config) == (
        ["query_key_value"] if arch == "gpt-neox" else ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


def test_seq_cls_shares_the_backbone_names_with_the_causal_lm(tiny_models):
    lm, _ = load_model(tiny_models["gpt-neox"])
    rm, tok = load_model(tiny_models["gpt-neox"], task="seq-cls")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    # same backbone weights: a LoRA trained on one loads onto the other
    assert torch.equal(
        lm.gpt_neox.layers[0].attention.query_key_value.weight,
        rm.gpt_neox.layers[0].attention.query_key_value.weight,
    )
    peft_rm = add_lora(rm, task="seq-cls")
    trainable = {n for n, p in peft_rm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any(
        n.endswith("score.modules_to_save.default.weight") for n in trainable
    )


def test_lora_defaults_are_the_originals(tiny_models):
    model, _ = load_model(tiny_models["llama"])
    cfg = default_lora_config(model.config)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 32, 0.05)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with pytest.raises(InputError, match="embed_out"):
        add_lora(model, default_lora_config(model.config, modules_to_save=["embed_out"]))


def test_4bit_load_quantises_the_linear_layers(tiny_models):
    bnb = pytest.importorskip("bitsandbytes")
    model, _ = load_model(tiny_models["llama"], load_in_4bit=True)
    q = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q, "no 4-bit layers"
    assert q[0].weight.quant_type == "nf4"
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_bad_model_paths_are_clear_errors(tmp_path, tiny_models):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="expected a model directory"):
        load_model(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a model directory"):
        load_model(tmp_path / "empty")
    with pytest.raises(InputError, match="not a LoRA adapter"):
        load_model(tiny_models["gpt-neox"], adapter=tmp_path / "empty")
    with pytest.raises(InputError, match="unknown model size"):
        init_tiny("gpt-neox", tiny_models["gpt-neox"], tmp_path / "x", size="huge")


def test_tokenizer_without_pad_or_eos_is_refused(tmp_path, polyglot_tokenizer_dir):
    tok_dir = tmp_path / "tok"
    shutil.copytree(polyglot_tokenizer_dir, tok_dir)
    cfg_path = tok_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("eos_token", "pad_token", "bos_token", "unk_token"):
        cfg[key] = None
    cfg_path.write_text(json.dumps(cfg))
    (tok_dir / "special_tokens_map.json").write_text("{}")
    with pytest.raises(InputError, match="neither a pad token nor an eos token"):
        load_tokenizer(tok_dir)
    # with only an eos token (polyglot-ko's case) the eos pads
    assert load_tokenizer(polyglot_tokenizer_dir).pad_token == "<|endoftext|>"


def test_cli_init_tiny_json(tmp_path, polyglot_tokenizer_dir):
    from typer.testing import CliRunner

    import dnfbot.cli as cli

    res = CliRunner().invoke(
        cli.app,
        [
            "model",
            "init-tiny",
            "--arch",
            "llama",
            "--tokenizer",
            str(polyglot_tokenizer_dir),
            "--out",
            str(tmp_path / "m"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["arch"] == "llama" and out["vocab"] == 30003 and out["params"] > 1_000_000
    assert (tmp_path / "m" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "name,targets",
    [
        ("polyglot-ko-1.3b", ["query_key_value"]),
        ("polyglot-ko-12.8b", ["query_key_value"]),
        ("eeve-10.8b", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ],
)
def test_real_model_configs_parse_for_every_stage(name, targets):
    from pathlib import Path

    from dnfbot.train.options import load_options

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    sft = load_options("sft", path, {"max_steps": 5})
    rm = load_options("rm", path)
    gen = load_options("generate", path)
    ppo = load_options("ppo", path)  # one schema: every stage reads every config
    assert ppo.model == sft.model and ppo.lora_targets == targets
    assert sft.load_in_4bit and rm.load_in_4bit and sft.max_steps == 5  # QLoRA; flags win over the file
    assert sft.lora_targets == rm.lora_targets == targets
    # the original set-up
    assert (sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.lr) == (8, 32, 0.05, 1e-4)
    assert (gen.num_beams, gen.no_repeat_ngram_size, gen.max_new_tokens) == (3, 4, 256)
    assert not sft.trust_remote_code
