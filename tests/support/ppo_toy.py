"""A toy RLHF task that a tiny random-init model learns on a CPU in seconds — for tests, demos and benchmarks.

SFT data: answers are 2-5 words drawn uniformly from six fruit names, ended by EOS. The reward model is trained on
pairs that prefer the answer in which a larger share of the words is "사과" (apple). So the SFT policy says 사과 in
about 1 word of 6, and PPO has a reward it can clearly raise (say 사과 more often; length does not pay) — while
the KL penalty measures how far it moved.

Both adapters are trained here with short plain PyTorch loops (a few hundred steps on a ~5M-parameter model), in
the same format as `dnfbot train sft` / `dnfbot train rm` write them: PEFT LoRA, CAUSAL_LM and SEQ_CLS (score head
in modules_to_save)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dnfbot.formats import EOS, model_prompt
from dnfbot.io import write_jsonl

FRUITS = ["사과", "바나나", "포도", "딸기", "수박", "참외"]
TARGET = "사과"
TOPICS = ["던전", "레이드", "장비", "스킬", "아이템", "퀘스트", "캐릭터", "강화", "던전앤파이터", "파티"]


@dataclass
class ToyTask:
    base: Path
    sft_adapter: Path
    reward_adapter: Path
    prompts: Path
    rm_accuracy: float  # pairwise accuracy of the reward model on held-out pairs


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(TOPICS)} {rng.choice(TOPICS)} 에 대해 과일로 답해 줘 {i}" for i in range(n)]


def toy_answer(rng: random.Random) -> str:
    return " ".join(rng.choice(FRUITS) for _ in range(rng.randint(2, 5)))


def target_share(text: str) -> float:
    """Share of the words that are the target word — what the toy reward model learns to prefer."""
    words = text.split()
    return sum(w == TARGET for w in words) / max(len(words), 1)


def _tokenize(tok, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
    tok.padding_side = padding_side
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _answer_loss(model, tok, prompts: list[str], rng: random.Random, n: int = 16) -> torch.Tensor:
    """Cross-entropy on the answer tokens (and their EOS) of `n` random toy examples."""
    qs = [model_prompt(rng.choice(prompts)) for _ in range(n)]
    enc = _tokenize(tok, [f"{q} {toy_answer(rng)}{EOS}" for q in qs])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    answer = mask.clone()
    for i, q in enumerate(qs):
        answer[i, : len(tok(q, add_special_tokens=False)["input_ids"])] = 0
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    # logits only where a next answer token is predicted: the 30k-word LM head is most of the cost
    hidden = core.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    sel = answer[:, 1:].bool()
    return F.cross_entropy(core.get_output_embeddings()(hidden[sel]).float(), ids[:, 1:][sel])


def pretrain_base(base: Path, prompts: list[str], steps: int = 150, seed: int = 0) -> Path:
    """Full fine-tune of the random-init base on toy answers, saved in place. A random-init model's logits are too
    flat (final layer norm x small head weights) for LoRA on attention alone to concentrate them on six words; after
    this "pre-training" the base already speaks fruit, like a real base model speaks Korean."""
    from dnfbot.models import load_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tok = load_model(str(base), task="causal-lm")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = _answer_loss(model, tok, prompts, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(base), safe_serialization=True)
    return base


_MLP = {"gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"], "llama": ["gate_proj", "up_proj", "down_proj"]}


def train_sft_adapter(base: Path, out: Path, prompts: list[str], steps: int = 30, seed: int = 0) -> Path:
    """LoRA on attention and MLP projections (`lora.targets` of `dnfbot train sft`): the MLP adapters let a 2-layer
    model move its output distribution within a few PPO steps; attention-only LoRA moves it far more slowly."""
    from peft import get_peft_model

    from dnfbot.models import default_lora_config, load_model, lora_target_modules

    torch.manual_seed(seed)
    rng = random.Random(seed + 2)
    model, tok = load_model(str(base), task="causal-lm")
    targets = lora_target_modules(model.config) + _MLP[model.config.model_type]
    model = get_peft_model(model, default_lora_config(model.config, "causal-lm", target_modules=targets))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = _answer_loss(model, tok, prompts, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _pairs(prompts: list[str], n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    out = []
    while len(out) < n:
        a, b = toy_answer(rng), toy_answer(rng)
        if target_share(a) == target_share(b):
            continue
        chosen, rejected = (a, b) if target_share(a) > target_share(b) else (b, a)
        out.append((model_prompt(rng.choice(prompts)), chosen, rejected))
    return out


def train_reward_adapter(
    base: Path, out: Path, prompts: list[str], steps: int = 200, seed: int = 0
) -> tuple[Path, float]:
    """Bradley-Terry loss -log sigmoid(r_chosen - r_rejected); returns (adapter dir, held-out pair accuracy)."""
    from peft import get_peft_model

    from dnfbot.models import default_lora_config, load_model

    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    model, tok = load_model(str(base), task="seq-cls")
    model = get_peft_model(model, default_lora_config(model.config, "seq-cls"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def rewards(batch: list[tuple[str, str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = _tokenize(tok, [f"{q} {c}{EOS}" for q, c, _ in batch] + [f"{q} {r}{EOS}" for q, _, r in batch])
        r = model(**enc).logits[:, 0]
        return r[: len(batch)], r[len(batch) :]

    model.train()
    for _ in range(steps):
        chosen, rejected = rewards(_pairs(prompts, 16, rng))
        loss = -F.logsigmoid(chosen - rejected).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        chosen, rejected = rewards(_pairs(prompts, 128, random.Random(seed + 99)))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out, float((chosen > rejected).float().mean())


def make_toy_task(
    workdir: str | Path,
    tokenizer_dir: str | Path,
    *,
    arch: str = "gpt-neox",
    size: str = "tiny",
    seed: int = 0,
    n_prompts: int = 96,
    base_steps: int = 150,
    sft_steps: int = 30,
    rm_steps: int = 150,
) -> ToyTask:
    from dnfbot.models import init_tiny

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(init_tiny(arch, tokenizer_dir, work / "base", size=size, seed=seed))
    prompts = toy_prompts(n_prompts, seed)
    pretrain_base(base, prompts, steps=base_steps, seed=seed)
    prompts_path = work / "prompts.jsonl"
    write_jsonl(prompts_path, [{"prompt": p} for p in prompts])
    sft = train_sft_adapter(base, work / "sft", prompts, steps=sft_steps, seed=seed)
    rm, acc = train_reward_adapter(base, work / "rm", prompts, steps=rm_steps, seed=seed)
    return ToyTask(base=base, sft_adapter=sft, reward_adapter=rm, prompts=prompts_path, rm_accuracy=acc)
