"""The models of PPO: policy, reference and reward model on ONE copy of the base weights.

    policy     base + trainable LoRA adapter ("default") + a scalar value head on the last hidden state
    reference  the SAME base with a frozen copy of the SFT adapter (adapter "ref"), or with adapters disabled when
               the base already is the SFT model (no SFT adapter given)
    reward     the reward model's LoRA adapter loaded as a third adapter ("reward") onto the same base, plus the
               score head saved with it (modules_to_save); a separately loaded model when the architectures differ

Only small LoRA matrices are added: the base weights exist once, also in 4-bit. Switching roles is switching the
active adapter (`adapter_scope`). The algorithm: ppo.py (maths, step, loop), rollout.py, run.py.

Why the reference is a frozen adapter copy and not "adapter disabled": the policy starts as base + SFT adapter and
PPO trains that adapter. Disabling it would give the pre-SFT base model, so the KL penalty would pull the policy
back to the base. A frozen copy of the (few-MB) SFT adapter on the same base weights is the SFT model, costs no
second copy of the base, and is what TRL's GRPO/RLOO trainers do too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnfbot.errors import InputError

POLICY, REF, REWARD = "default", "ref", "reward"


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of a left-padded row (what generate() uses), 0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, also in train() mode (needed for gradient checkpointing) and in LoRA layers."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def keep_4bit_trainable_on_cpu(model: nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for fast CPU inference at the first eval-mode forward (rollout), after
    which a forward with gradients (the PPO update) fails. Only the policy trains, so only it needs this; it changes
    nothing on a GPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bnb.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False


def _core(model: nn.Module) -> nn.Module:
    """The transformers *For* model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden state (after the final norm) of the transformer body — no LM head, no classifier head.

    The body is the same module in the CausalLM and SequenceClassification classes (gpt_neox.* / model.*), which is
    why the reward model's LoRA weights apply to it unchanged."""
    body = _core(model).base_model
    out = body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    return out.last_hidden_state


@contextlib.contextmanager
def adapter_scope(model: nn.Module, name: str | None) -> Iterator[None]:
    """Run with adapter `name` active (frozen), or with adapters disabled (name=None); restore afterwards."""
    if not hasattr(model, "peft_config"):
        yield
        return
    if name is None:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    if previous == name:
        yield
        return
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        # set_adapter(previous) makes `previous` trainable again, which is what the policy adapter needs
        model.set_adapter(previous, inference_mode=not _is_trainable(model, previous))


def _is_trainable(model: nn.Module, adapter: str) -> bool:
    return getattr(model, "_dnfbot_trainable_adapter", None) == adapter


def pool_last_non_pad(ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Index of the rightmost token that is not padding — where a HF sequence classifier reads its score."""
    if pad_id is None:
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
    positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
    return (positions * (ids != pad_id)).argmax(-1)


class RewardModel:
    """Reward-model scores for token sequences, on the policy's base (shared) or from a separately loaded model."""

    def __init__(
        self,
        model: nn.Module,
        *,
        shared: bool,
        score_weight: torch.Tensor | None = None,
        score_bias: torch.Tensor | None = None,
        pad_id: int | None = None,
        tokenizer: Any = None,
        policy_tokenizer: Any = None,
    ):
        self.model, self.shared, self.pad_id = model, shared, pad_id
        self.score_weight, self.score_bias = score_weight, score_bias
        self.tokenizer = tokenizer
        # a separate RM with another vocabulary gets text, re-tokenised with its own tokenizer
        self.same_vocab = shared or tokenizer is None or tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        self.policy_tokenizer = policy_tokenizer

    @torch.no_grad()
    def score(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: left-padded query + response (padding after EOS), mask: 1 on real tokens -> (B,) float32."""
        if not self.same_vocab:
            return self._score_texts(ids, mask)
        last = pool_last_non_pad(
            ids.masked_fill(mask == 0, self.pad_id if self.pad_id is not None else 0), self.pad_id
        )
        if self.shared:
            with adapter_scope(self.model, REWARD):
                hidden = backbone_hidden(self.model, ids, mask)
            pooled = hidden[torch.arange(ids.shape[0], device=ids.device), last].float()
            out = pooled @ self.score_weight.T
            if self.score_bias is not None:
                out = out + self.score_bias
            return out[:, 0]
        device = next(self.model.parameters()).device
        logits = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids_from_mask(mask).to(device),
        ).logits
        return logits[:, 0].float().to(ids.device)

    def _score_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        texts = [
            self.policy_tokenizer.decode(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        return self.model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float().to(ids.device)


@dataclass
class PPOModels:
    """Everything PPO needs. `lm` carries the policy adapter; the reference and reward live on it too unless a
    separate `ref_model` / non-shared reward model was loaded (the naive three-copies set-up, for comparison)."""

    lm: nn.Module  # PeftModel: base + POLICY adapter (trainable) [+ REF] [+ REWARD]
    value_head: nn.Linear
    tokenizer: Any
    reward: RewardModel
    ref_adapter: str | None  # REF, or None = the base with adapters disabled
    ref_model: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.lm.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def policy_logits_and_values(
        self, ids: torch.Tensor, mask: torch.Tensor, q_len: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits / T, values) for the response positions only: the LM head runs on R positions, not on the
        whole sequence, which is where PPO saves memory against a plain forward()."""
        hidden = self.policy_hidden(ids, mask, q_len)
        logits = _core(self.lm).get_output_embeddings()(hidden).float() / temperature
        return logits, self.value_head(hidden.float()).squeeze(-1)

    def policy_hidden(self, ids: torch.Tensor, mask: torch.Tensor, q_len: int) -> torch.Tensor:
        """The policy's last hidden state at the positions that predict the response tokens."""
        return backbone_hidden(self.lm, ids, mask)[:, q_len - 1 : -1]

    @torch.no_grad()
    def ref_logits(
        self, ids: torch.Tensor, mask: torch.Tensor, q_len: int, temperature: float
    ) -> torch.Tensor:
        """Reference logits / T for the response positions (frozen adapter, adapters off, or a separate model)."""
        if self.ref_model is not None:
            model, scope = self.ref_model, contextlib.nullcontext()
        else:
            model, scope = self.lm, adapter_scope(self.lm, self.ref_adapter)
        with scope:
            hidden = backbone_hidden(model, ids, mask)[:, q_len - 1 : -1]
            return _core(model).get_output_embeddings()(hidden).float() / temperature


def read_adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = adapter_dir / "adapter_model.safetensors"
    if not file.exists():
        raise InputError(f"{adapter_dir}: no adapter_model.safetensors (expected a PEFT adapter directory)")
    return load_file(str(file))


def _score_head(adapter_dir: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The classifier head saved with a SEQ_CLS LoRA adapter (modules_to_save: score)."""
    weights = read_adapter_weights(adapter_dir)
    for head in ("score", "classifier"):
        w = next((v for k, v in weights.items() if k.endswith(f"{head}.weight")), None)
        if w is not None:
            b = next((v for k, v in weights.items() if k.endswith(f"{head}.bias")), None)
            if w.shape[0] != 1:
                raise InputError(f"{adapter_dir}: reward head has {w.shape[0]} labels, expected 1")
            return w.float(), (b.float() if b is not None else None)
    raise InputError(
        f"{adapter_dir}: adapter has no score head weights (modules_to_save); "
        "pass the reward model as a separate model with --reward-model"
    )


def parameter_storage(*modules: nn.Module | None) -> dict[int, int]:
    """{data_ptr: bytes} of every distinct parameter storage across modules — shared weights count once."""
    storage: dict[int, int] = {}
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            s = p.untyped_storage()
            storage[s.data_ptr()] = s.nbytes()
    return storage


def models_storage_bytes(models: PPOModels) -> int:
    rm = None if models.reward.shared else models.reward.model
    return sum(parameter_storage(models.lm, models.value_head, models.ref_model, rm).values())


def build_models(
    model: str,
    *,
    sft_adapter: str | Path | None,
    reward_adapter: str | Path | None,
    reward_model: str | None = None,
    policy_adapter: str | Path | None = None,
    load_in_4bit: bool = False,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    lora: Any = None,
    share_base: bool = True,
    with_reference: bool = True,
    gradient_checkpointing: bool = False,
    seed: int = 0,
) -> PPOModels:
    """Load base + adapters for PPO.

    policy adapter = `policy_adapter` (resume / evaluation of a trained run) or `sft_adapter`, trainable;
    reference = frozen copy of `sft_adapter` on the same base, or adapters disabled when there is none;
    reward = `reward_adapter` on the same base when `reward_model` is not given (or is `model`), else
    `reward_model` (+ `reward_adapter`) loaded separately. share_base=False loads reference and reward model as
    separate full models (the naive set-up; used by `dnfbot bench ppo`). with_reference=False leaves the reference
    to the caller (TRL's trainers add their own "ref" adapter). `lora` (LoraOptions' fields) shapes a fresh
    policy adapter; dtype / trust_remote_code go to every load_model."""
    from functools import partial

    from dnfbot.models import add_lora, check_adapter, default_lora_config, load_model

    # every adapter checked before the base loads: a typo or a pickled adapter costs no start-up time
    for path, what in ((sft_adapter, "--sft-adapter"), (reward_adapter, "--reward-adapter"),
                       (policy_adapter, "policy adapter")):  # fmt: skip
        if path is not None:
            check_adapter(path, what)
    torch.manual_seed(seed)
    load = partial(load_model, load_in_4bit=load_in_4bit, dtype=dtype, trust_remote_code=trust_remote_code)
    start_adapter = policy_adapter or sft_adapter
    lm, tokenizer = load(
        model,
        task="causal-lm",
        adapter=str(start_adapter) if start_adapter else None,
        adapter_trainable=True,
    )
    lm = to_accelerator(lm)
    if not hasattr(lm, "peft_config"):
        # no SFT adapter: the base is the SFT model; train a fresh LoRA, the reference is the base (adapters off)
        lm = add_lora(lm, default_lora_config(lm.config, "causal-lm", **_lora_kwargs(lora)))
    if POLICY not in lm.peft_config:
        raise InputError(f"{start_adapter}: expected the adapter to load as '{POLICY}'")
    lm._dnfbot_trainable_adapter = POLICY
    if tokenizer.pad_token_id is None:
        raise InputError(f"{model}: tokenizer has no pad token")
    tokenizer.padding_side = "left"

    ref_model, ref_adapter = None, None
    if not with_reference:
        pass
    elif not share_base:
        ref_model, _ = load(model, task="causal-lm", adapter=str(sft_adapter) if sft_adapter else None)
        ref_model = to_accelerator(ref_model)
        ref_model.requires_grad_(False).eval()
        disable_dropout(ref_model)
    elif sft_adapter:
        lm.load_adapter(str(sft_adapter), adapter_name=REF, is_trainable=False)
        ref_adapter = REF

    shared_rm = (
        share_base
        and reward_adapter is not None
        and (reward_model is None or _same_path(reward_model, model))
    )
    if shared_rm:
        lm.load_adapter(str(reward_adapter), adapter_name=REWARD, is_trainable=False)
        w, b = _score_head(Path(reward_adapter))
        device = next(lm.parameters()).device
        reward = RewardModel(
            lm,
            shared=True,
            score_weight=w.to(device),
            score_bias=None if b is None else b.to(device),
            pad_id=tokenizer.pad_token_id,
        )
    else:
        if reward_model is None and reward_adapter is None:
            raise InputError("train ppo: give --reward-adapter (LoRA on the same base) or --reward-model")
        rm, rm_tok = load(
            reward_model or model, task="seq-cls", adapter=str(reward_adapter) if reward_adapter else None
        )
        rm = to_accelerator(rm)
        rm.requires_grad_(False).eval()
        disable_dropout(rm)
        pad = rm.config.pad_token_id if rm.config.pad_token_id is not None else rm_tok.pad_token_id
        reward = RewardModel(rm, shared=False, pad_id=pad, tokenizer=rm_tok, policy_tokenizer=tokenizer)

    lm.set_adapter(POLICY)
    disable_dropout(lm)
    if load_in_4bit:
        keep_4bit_trainable_on_cpu(lm)
    if gradient_checkpointing:
        _core(lm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hidden = _core(lm).config.get_text_config().hidden_size
    value_head = nn.Linear(hidden, 1).to(next(lm.parameters()).device)
    nn.init.zeros_(value_head.weight)  # V = 0 = the mean normalised reward at the start
    nn.init.zeros_(value_head.bias)
    if policy_adapter and (Path(policy_adapter) / "value_head.safetensors").exists():
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(str(Path(policy_adapter) / "value_head.safetensors")))
    return PPOModels(
        lm=lm,
        value_head=value_head,
        tokenizer=tokenizer,
        reward=reward,
        ref_adapter=ref_adapter,
        ref_model=ref_model,
    )


def to_accelerator(model: nn.Module) -> nn.Module:
    """The model on the GPU when there is one and no device map placed it (4-bit loads are placed by theirs):
    without this a bf16/fp32 PPO run — generation included — stayed on the CPU of a GPU box."""
    if torch.cuda.is_available() and getattr(model, "hf_device_map", None) is None:
        on = {p.device.type for p in model.parameters()}
        if on == {"cpu"}:
            return model.to(torch.device("cuda", torch.cuda.current_device()))
    return model


def _lora_kwargs(lora: Any) -> dict:
    if lora is None:
        return {}
    return dict(
        r=lora.lora_r,
        alpha=lora.lora_alpha,
        dropout=lora.lora_dropout,
        target_modules=lora.lora_targets,
        modules_to_save=lora.lora_modules_to_save,
    )


def _same_path(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve() or a == b
