"""Fine-tune a sentence embedder on (question, passage) pairs — the original's DNF-bge-m3, in one file.

Loss: multiple-negatives ranking (InfoNCE with in-batch negatives). For a batch of B pairs (q_i, p_i), and
optionally one mined hard negative n_i per pair,

    s_ij = scale · cos(q_i, c_j),   c = [p_1 … p_B, n_1 … n_B]
    L    = −(1/B) Σ_i log( exp(s_ii) / Σ_j exp(s_ij) )

so every other passage in the batch is a negative for q_i. Batches never hold the same passage twice (the
no-duplicates sampler): a duplicate would be a "negative" that is really a positive.

Hard negatives come from the BM25 index: the best-ranked chunk for the question that belongs to another article
(another chunk of the same article may well answer it too, so it is not used as a negative).

`init_embedder` makes the random-init BERT-style models the tests and benchmarks use (BertModel + mean pooling +
L2 normalisation, with the polyglot-ko tokenizer): nothing is downloaded, ever.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dnfbot.datasets.pairs import load_pairs
from dnfbot.errors import InputError
from dnfbot.io import atomic_write_json, iter_jsonl

# Model shapes for `dnfbot model init-embedder --size`. small = all-MiniLM-L6-v2's shape; m3 = bge-m3's
# (XLM-RoBERTa large) for the GPU throughput check: same layers/width/positions, polyglot-ko's vocabulary.
SIZES: dict[str, dict] = {
    "tiny": {
        "arch": "bert",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "max_position_embeddings": 512,
        "max_seq_length": 256,
    },
    "small": {
        "arch": "bert",
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
        "max_seq_length": 256,
    },
    "m3": {
        "arch": "xlm-roberta",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 8194,
        "max_seq_length": 8192,
    },
}


def init_embedder(tokenizer_dir: str | Path, out: str | Path, size: str = "tiny", seed: int = 0) -> dict:
    """Write a random-init sentence-transformers model (transformer + mean pooling + normalize) to `out`."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    Normalize, Pooling, Transformer = _st_modules()
    if size not in SIZES:
        raise InputError(f"--size {size}: choose one of {', '.join(SIZES)}")
    if not any((Path(tokenizer_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise InputError(f"{tokenizer_dir}: not a tokenizer folder (no tokenizer.json)")
    shape = dict(SIZES[size])
    arch, max_seq = shape.pop("arch"), shape.pop("max_seq_length")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **shape)
        model = BertModel(config)  # with its (unused) pooler: AutoModel would re-create it at load, noisily
    else:
        config = XLMRobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **shape)
        model = XLMRobertaModel(config)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=max_seq)
        st = SentenceTransformer(
            modules=[transformer, Pooling(config.hidden_size, "mean"), Normalize()], device="cpu"
        )
        st.save(str(out))
    params = sum(p.numel() for p in model.parameters())
    return {
        "out": str(out),
        "size": size,
        "arch": arch,
        "dim": config.hidden_size,
        "parameters": params,
        "max_seq_length": max_seq,
        "vocab": len(tok),
    }


def _st_modules():
    """Transformer/Pooling/Normalize: sentence-transformers >= 6 moved them (the old path warns)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Normalize, Pooling, Transformer


def _st_training():
    try:
        from sentence_transformers.base import BatchSamplers
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.losses import MultipleNegativesRankingLoss
        from sentence_transformers.training_args import BatchSamplers
    return BatchSamplers, MultipleNegativesRankingLoss


@dataclass
class EmbedTrainConfig:
    model: str
    pairs: str
    out: str
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0
    max_seq_length: int | None = None
    hard_negatives: bool = False
    query_prefix: str = ""
    passage_prefix: str = ""
    seed: int = 0
    max_pairs: int | None = None
    # CPU-sized fine-tuning (docs/dense.md): freeze the token embeddings (e5: 96M of its 118M parameters,
    # whose Adam state alone is 1.2 GB) and the lowest N transformer layers; recompute activations in the
    # backward pass instead of keeping them; stop after a fixed number of steps.
    freeze_layers: int = 0
    freeze_embeddings: bool = False
    gradient_checkpointing: bool = False
    max_steps: int | None = None


def mine_bm25_negatives(pairs: list[dict], index) -> list[str | None]:
    """For each pair, the passage text of the best BM25 chunk from another article (None if there is none)."""
    from dnfbot.retrieval.dense import passage_text

    negs = []
    for p in pairs:
        hits = index.search(p["query"], 5, None, per_doc=True)
        neg = next(
            (
                h.chunk
                for h in hits
                if h.chunk.doc_id != p.get("doc_id") and h.chunk.chunk_id != p["chunk_id"]
            ),
            None,
        )
        negs.append(passage_text(neg) if neg else None)
    return negs


# XLM-R tokens of this corpus: ~1,380 per 3,000-character chunk (≈ 2.2 characters a token); a little under, so
# that a cropped passage still fits the training cut.
CHARS_PER_TOKEN = 2


def crop_passage(query: str, passage: str, budget: int | None) -> str:
    """The passage as training sees it under a short `--max-seq-length`: when it is longer than `budget`
    characters and the query is one of its sentences (an inverse-cloze pair), the title line plus a window
    around that sentence — truncation would otherwise keep only the opening and drop the very sentence the
    question was taken from. Other passages are returned whole (the tokenizer truncates them)."""
    if not budget or len(passage) <= budget:
        return passage
    title, _, body = passage.partition("\n")
    at = body.find(query.strip())
    if at < 0:
        return passage
    room = max(budget - len(title) - 1, len(query))
    start = max(0, min(at - (room - len(query)) // 3, len(body) - room))  # sentence in the first third
    return f"{title}\n{body[start : start + room]}"


def train_embedder(cfg: EmbedTrainConfig, index=None, log=None) -> dict:
    """Fine-tune cfg.model on cfg.pairs; save the final model to cfg.out and one model per epoch to
    cfg.out/epoch-N; write cfg.out/train_log.jsonl (loss per logging step) and cfg.out/embedder_train.json."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    from dnfbot.retrieval.dense import load_model

    BatchSamplers, MultipleNegativesRankingLoss = _st_training()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    pairs = load_pairs(cfg.pairs, "train")
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    if len(pairs) < 2:
        raise InputError(f"{cfg.pairs}: need at least 2 training pairs, found {len(pairs)}")
    model = load_model(cfg.model)
    infer_length = model.max_seq_length  # what the saved model encodes with: a shorter training cut is not
    if cfg.max_seq_length:  # a reason to read less of each passage at search time
        model.max_seq_length = cfg.max_seq_length
    trainable = freeze(model, cfg.freeze_layers, cfg.freeze_embeddings or cfg.freeze_layers > 0)
    budget = cfg.max_seq_length * CHARS_PER_TOKEN if cfg.max_seq_length else None
    data = {
        "anchor": [cfg.query_prefix + p["query"] for p in pairs],
        "positive": [cfg.passage_prefix + crop_passage(p["query"], p["passage"], budget) for p in pairs],
    }
    mined = 0
    if cfg.hard_negatives:
        if index is None:
            raise InputError("hard negatives need the BM25 index: build one with `dnfbot index build`")
        negs = mine_bm25_negatives(pairs, index)
        keep = [i for i, n in enumerate(negs) if n is not None]  # every row needs a negative
        data = {k: [v[i] for i in keep] for k, v in data.items()}
        data["negative"] = [cfg.passage_prefix + negs[i] for i in keep]
        mined = len(keep)
    dataset = Dataset.from_dict(data)
    batch = min(cfg.batch_size, len(dataset))

    saved: list[str] = []  # the checkpoints this run wrote

    def save(path: Path) -> None:
        train_length = model.max_seq_length
        model.max_seq_length = infer_length
        model.save(str(path))
        model.max_seq_length = train_length

    class EpochSaver(TrainerCallback):
        """One loadable model per epoch (epoch-1, epoch-2, …) for `dnfbot eval embedder`; no optimizer state."""

        def on_epoch_end(self, args, state, control, **kw):
            if cfg.max_steps and state.global_step >= cfg.max_steps:
                return  # a bounded run stopped inside this epoch: the final save is the model
            epoch = round(state.epoch or 0)
            save(out / f"epoch-{epoch}")
            saved.append(str(out / f"epoch-{epoch}"))

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": logs["loss"]}
                with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                if log:
                    log(rec)

    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.jsonl").unlink(missing_ok=True)
    steps_per_epoch = max(1, len(dataset) // batch)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # frozen lower layers: the checkpointed segments get no grad-requiring input otherwise
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        per_device_train_batch_size=batch,
        learning_rate=cfg.lr,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        logging_steps=max(1, min(steps_per_epoch, total_steps) // 5),
        report_to="none",
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        dataloader_drop_last=True,
    )
    loss = MultipleNegativesRankingLoss(model, scale=cfg.scale)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[EpochSaver(), LossLog()]
    )
    t_train = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the HF progress callback prints its logs on stdout
        trainer.train()
    if trainer.state.global_step == 0:  # the no-duplicates sampler found no batch of distinct texts
        raise InputError(
            f"{cfg.pairs}: no batch of {batch} pairs with {batch} distinct passages (and negatives); "
            "lower --batch-size or add pairs over more passages"
        )
    save(out)
    log_path = out / "train_log.jsonl"
    losses = [r["loss"] for r in iter_jsonl(log_path)] if log_path.exists() else []
    base = Path(cfg.model).expanduser()
    summary = {
        **asdict(cfg),
        # absolute, so that `eval embedder --run` works from any directory
        "model_path": str(base.resolve()) if base.exists() else cfg.model,
        "train_pairs": len(dataset),
        "hard_negatives_mined": mined,
        "steps": trainer.state.global_step,
        "trainable_parameters": trainable["trainable"],
        "total_parameters": trainable["total"],
        "seconds_per_step": round((time.perf_counter() - t_train) / max(1, trainer.state.global_step), 2),
        "peak_rss_mb": round(_peak_rss_mb()),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "checkpoints": saved,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "embedder_train.json", summary)
    return summary


def freeze(model, layers: int = 0, embeddings: bool = False) -> dict:
    """Freeze the word/position embeddings and the lowest `layers` transformer layers of a sentence-transformers
    model (BERT/XLM-R-style encoders); return the trainable and total parameter counts."""
    backbone = model[0].auto_model
    if embeddings and hasattr(backbone, "embeddings"):
        backbone.embeddings.requires_grad_(False)
    if layers:
        blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
        if blocks is None:
            raise InputError("--freeze-layers: this model has no encoder.layer stack to freeze")
        if layers > len(blocks):
            raise InputError(f"--freeze-layers {layers}: the model has {len(blocks)} layers")
        for block in blocks[:layers]:
            block.requires_grad_(False)
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
