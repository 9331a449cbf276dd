"""Models for every training stage: one loader, tiny offline models, LoRA defaults.

- `init_tiny` builds a random-init model of the *real* architecture (GPTNeoX = polyglot-ko, Llama = EEVE /
  SOLAR) with the real polyglot-ko tokenizer, so tests and demos exercise the same code paths as the 1.3B-12.8B
  models without downloading weights.
- `load_model` is the one loader used by SFT, RM, PPO, generation and merging: local path or hub id, optional
  4-bit (nf4 + double quantisation + bf16 compute: QLoRA's recipe), optional LoRA adapter, causal LM or
  1-label sequence classifier (reward model). Safetensors only; `trust_remote_code` off unless asked.
- `default_lora_config` holds the default hyper-parameters (r=8, alpha=32, dropout 0.05) with target modules
  chosen by architecture.

LoRA layout note (PPO relies on it): `XForCausalLM` and `XForSequenceClassification` share the backbone module
names (`gpt_neox.*` for GPTNeoX, `model.*` for Llama), so LoRA weights trained on one load onto the other. Only
the heads differ: `embed_out`/`lm_head` vs `score` (the reward head, saved through `modules_to_save`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dnfbot.errors import InputError

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import peft
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

Arch = Literal["gpt-neox", "llama"]
Task = Literal["causal-lm", "seq-cls"]

# Shapes: "tiny" (~4-5M params, mostly the 30k-token embeddings) for tests; "small" (~40M) for demos.
# GPTNeoX keeps polyglot-ko's layout (parallel residual, rotary on 1/2 of the head dims); Llama uses grouped-query
# attention like EEVE-10.8B (SOLAR) with 2x fewer KV heads.
_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 256},
    "small": {"hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 1536},
}
# The real model shapes, for `init_tiny(size=...)` on a GPU box (benchmarks of peak memory / tokens/s).
_REAL_SHAPES: dict[str, dict[str, int]] = {
    "1.3b": {"hidden": 2048, "layers": 24, "heads": 16, "kv_heads": 16, "ffn": 8192},
    "12.8b": {"hidden": 5120, "layers": 40, "heads": 40, "kv_heads": 40, "ffn": 20480},
    "10.8b": {"hidden": 4096, "layers": 48, "heads": 32, "kv_heads": 8, "ffn": 14336},
}
MAX_POSITIONS = 2048
# the training recipe a model folder may carry (train/options.py read_recipe applies it)
RECIPE_FILE = "dnfbot_recipe.json"


def _round_up(n: int, multiple: int = 128) -> int:
    # polyglot-ko pads its 30,003-token vocabulary to 30,080 rows (a multiple of 128) for fast matmuls
    return (n + multiple - 1) // multiple * multiple


def init_tiny(
    arch: Arch,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: str = "tiny",
    seed: int = 0,
) -> Path:
    """Random-init GPTNeoXForCausalLM / LlamaForCausalLM with the given tokenizer copied in (safetensors).

    size: "tiny" | "small", or a real shape ("1.3b", "12.8b", "10.8b") for GPU memory benchmarks."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    shapes = {**_SIZES, **_REAL_SHAPES}
    if size not in shapes:
        raise InputError(f"unknown model size '{size}' (choose from {', '.join(shapes)})")
    if arch not in ("gpt-neox", "llama"):
        raise InputError(f"unknown architecture '{arch}' (choose gpt-neox or llama)")
    tok = load_tokenizer(tokenizer_dir)
    s = shapes[size]
    common: dict[str, Any] = {
        "vocab_size": _round_up(len(tok)),
        "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "intermediate_size": s["ffn"],
        "max_position_embeddings": MAX_POSITIONS,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    # real shapes are built and saved in bf16 (a 12.8B model is 51 GB in fp32); tiny/small stay fp32
    dtype = torch.float32 if size in _SIZES else torch.bfloat16
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if arch == "gpt-neox":
            config = GPTNeoXConfig(**common, rotary_pct=0.5, use_parallel_residual=True)
            model = GPTNeoXForCausalLM(config)
        else:
            config = LlamaConfig(**common, num_key_value_heads=s["kv_heads"], rms_norm_eps=1e-5)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if size in _SIZES:  # the real shapes are for memory benchmarks: they keep the real models' defaults
        from dnfbot.io import atomic_write_json

        atomic_write_json(out / RECIPE_FILE, tiny_recipe(arch))
    return out


def tiny_recipe(arch: Arch) -> dict[str, Any]:
    """What makes a random-init tiny model learn in a few dozen steps (measured: docs/training.md), written by
    `init_tiny` beside the weights and applied by `dnfbot train sft|rm|ppo` where the user sets nothing else.

    A random-init model's logits are flat and its embeddings noise: LoRA on the attention alone (4k parameters)
    moves nothing, so the LM head and the input embeddings train in full (modules_to_save), LoRA adapts every
    linear layer, dropout is off and the learning rate is ~100x a real model's."""
    embed = "embed_in" if arch == "gpt-neox" else "embed_tokens"
    lora = {"lora_targets": "all-linear", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
    return {
        "kind": "random-init demo model (dnfbot model init-tiny)",
        "note": "not a language model: random weights of a real architecture, for offline tests and demos",
        "stages": {
            "sft": {**lora, "lora_modules_to_save": ["lm_head", embed], "lr": 1e-2},
            # the score head is always trained in full (train/reward.py)
            "rm": {**lora, "lr": 3e-3},
            "ppo": {**lora, "lora_modules_to_save": ["lm_head"], "lr": 1e-3},
            "dpo": {**lora, "lora_modules_to_save": ["lm_head", embed], "lr": 3e-3},
        },
    }


def load_tokenizer(path: str | os.PathLike, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (the eos token when it has none, as polyglot-ko does)."""
    from transformers import AutoTokenizer

    src = _resolve(path)
    try:
        tok = AutoTokenizer.from_pretrained(src, padding_side=padding_side)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot load a tokenizer: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError(f"{path}: tokenizer has neither a pad token nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    # polyglot-ko's config asks for WordPiece-style clean-up, which transformers ignores for BPE (with a warning)
    tok.clean_up_tokenization_spaces = False
    return tok


def load_model(
    path_or_id: str | os.PathLike,
    *,
    task: Task = "causal-lm",
    load_in_4bit: bool = False,
    adapter: str | os.PathLike | None = None,
    adapter_trainable: bool = False,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    device_map: Any = None,
    padding_side: str = "right",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a local path or hub id; the tokenizer comes from the adapter dir when it has one.

    task="seq-cls" builds a 1-label classifier (reward model) whose config knows the pad token, so the score is
    read at each sequence's last real token. dtype: None = bf16 compute with 4-bit, otherwise float32 on CPU and
    bf16 on a GPU that supports it; or a name ("float32", "bfloat16", "float16", "auto") or a torch.dtype."""
    if adapter is not None:  # before the base loads: a typo or a pickled adapter costs no start-up time
        check_adapter(adapter)
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    src = _resolve(path_or_id)
    tok_src = adapter if adapter is not None and _has_tokenizer(adapter) else src
    tok = load_tokenizer(tok_src, padding_side=padding_side)
    torch_dtype = _pick_dtype(dtype, load_in_4bit)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
        "dtype": torch_dtype,
    }
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if device_map is None and torch.cuda.is_available():
            device_map = quantized_device_map()
    if device_map is not None:
        kwargs["device_map"] = device_map
    if task == "seq-cls":
        kwargs.update(num_labels=1, pad_token_id=tok.pad_token_id)
        auto = AutoModelForSequenceClassification
    elif task == "causal-lm":
        auto = AutoModelForCausalLM
    else:
        raise InputError(f"unknown task '{task}' (choose causal-lm or seq-cls)")
    try:
        if task == "seq-cls":
            # a causal-LM checkpoint has an lm head and no score head: expected, so the load report is quieted
            with _quiet_transformers():
                model = auto.from_pretrained(src, **kwargs)
        else:
            model = auto.from_pretrained(src, **kwargs)
    except OSError as e:
        raise InputError(f"{path_or_id}: cannot load model: {str(e).splitlines()[0]}") from None
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if adapter is not None:
        model = _attach_adapter(model, adapter, trainable=adapter_trainable)
    return model, tok


def quantized_device_map() -> dict[str, int]:
    """Where a 4-bit model loads (bitsandbytes needs one device for all of it): this process's GPU. Under
    `accelerate launch` / torchrun each process owns GPU LOCAL_RANK; the Accelerator has not yet set the current
    device when the model loads, so torch.cuda.current_device() would put every rank on GPU 0."""
    rank = os.environ.get("LOCAL_RANK")
    if rank is not None:
        return {"": int(rank)}
    import torch

    return {"": torch.cuda.current_device()}


def lora_target_modules(config: PretrainedConfig) -> list[str]:
    """The attention projections LoRA adapts, by architecture: attention only keeps the adapter small (QLoRA on one
    GPU) and is where the question/passage wording is matched."""
    mt = getattr(config, "model_type", None)
    if mt == "gpt_neox":
        return ["query_key_value"]
    if mt in ("llama", "mistral", "qwen2", "gemma", "gemma2"):
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
    raise InputError(
        f"no default LoRA target modules for model type '{mt}'; pass them in the config (lora.targets)"
    )


def default_lora_config(
    config: PretrainedConfig,
    task: Task = "causal-lm",
    *,
    r: int = 8,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
) -> peft.LoraConfig:
    """LoRA r=8, alpha=32 (scale 4), dropout 0.05: a small adapter, so that QLoRA on a large base stays within one
    GPU. For the reward model the `score` head is fully trained and saved with the adapter (modules_to_save). target_modules may be "all-linear" (PEFT's shortcut);
    modules_to_save adds fully trained modules (e.g. the LM head `lm_head` of a random-init tiny model)."""
    from peft import LoraConfig, TaskType

    seq = task == "seq-cls"
    save = list(modules_to_save or [])
    if seq and "score" not in save:
        save.append("score")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or lora_target_modules(config),
        bias="none",
        task_type=TaskType.SEQ_CLS if seq else TaskType.CAUSAL_LM,
        modules_to_save=save or None,
    )


def add_lora(
    model: PreTrainedModel,
    lora_config: peft.LoraConfig | None = None,
    *,
    task: Task = "causal-lm",
    gradient_checkpointing: bool = False,
) -> peft.PeftModel:
    """Wrap a (possibly 4-bit) model with a fresh trainable LoRA adapter."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # casts norms to fp32 and makes inputs require grads so checkpointed 4-bit layers backpropagate
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora_config = lora_config or default_lora_config(model.config, task)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for m in lora_config.modules_to_save or []:
        if m not in names:  # PEFT would silently train nothing
            raise InputError(f"lora: module '{m}' not found in the model (modules_to_save)")
    return get_peft_model(model, lora_config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# --- helpers -------------------------------------------------------------------------------------------------


def _resolve(path_or_id: str | os.PathLike) -> str:
    """A local model dir (must hold config.json or tokenizer files), or a hub id 'org/name' left as is."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{path_or_id}: expected a model directory, got a file")
        if not any((p / f).exists() for f in ("config.json", "tokenizer_config.json", "adapter_config.json")):
            raise InputError(f"{path_or_id}: not a model directory (no config.json or tokenizer files)")
        return str(p)
    s = str(path_or_id)
    looks_like_hub_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and "\\" not in s
    if not looks_like_hub_id:
        raise InputError(f"{path_or_id}: model path does not exist")
    return s


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _has_tokenizer(path: str | os.PathLike) -> bool:
    return (Path(path) / "tokenizer_config.json").exists()


def _pick_dtype(dtype: str | torch.dtype | None, load_in_4bit: bool) -> Any:
    import torch

    if dtype is None:
        if load_in_4bit:
            return torch.bfloat16
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        names = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }
        if dtype not in names:
            raise InputError(f"unknown dtype '{dtype}' (choose from auto, {', '.join(names)})")
        return names[dtype]
    return dtype


def check_adapter(adapter: str | os.PathLike, what: str = "adapter") -> Path:
    """A LoRA adapter folder with its weights as safetensors, or a one-line InputError. PEFT would also unpickle
    an `adapter_model.bin` (arbitrary code on load): refused, like pickled base models."""
    a = Path(adapter).expanduser()
    if not a.exists():
        raise InputError(f"{adapter}: {what} folder not found")
    if not a.is_dir() or not (a / "adapter_config.json").exists():
        raise InputError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    if not (a / "adapter_model.safetensors").exists():
        if (a / "adapter_model.bin").exists():
            raise InputError(
                f"{adapter}: holds only adapter_model.bin (a pickle); adapters load from safetensors only — "
                "re-save it with save_pretrained(safe_serialization=True)"
            )
        raise InputError(f"{adapter}: no adapter_model.safetensors in the adapter directory")
    return a


def _attach_adapter(model: PreTrainedModel, adapter: str | os.PathLike, *, trainable: bool) -> peft.PeftModel:
    from peft import PeftModel

    a = check_adapter(adapter)
    return PeftModel.from_pretrained(model, str(a), is_trainable=trainable)
