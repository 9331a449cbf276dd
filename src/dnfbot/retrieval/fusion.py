"""Choosing the hybrid fusion and weights on a dev set, and keeping them with the index.

`dnfbot eval retrieval --calibrate` (hybrid mode) scores every candidate — weighted min-max fusion and RRF at
sparse weights 0.3 … 1.0 (dense = 1 − sparse; 1.0 is BM25's ranking, so the choice can never fall below it on
the dev set) — by (Recall@k, MRR@k) on the answerable questions, and reports it two ways:

* **held out** (two-fold): the dev set is split in two stable halves (a hash of the question id); the best
  candidate on one half is scored on the other, and the halves are pooled. This is the honest number.
* **stored**: the best candidate on the whole dev set, written to `index-dir/fusion.json` under the dense
  model's identity. `open_dense_retriever` uses it whenever `dense.calibrated` is on (the default), so
  rebuilding the index for a corpus edit keeps it, and a different model starts from the settings again.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dnfbot.io import atomic_write_json, read_json

FUSION_FILE = "fusion.json"
SPARSE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def gold_ranks(rankings: list[list[str]], gold: list[list[str]], k: int) -> list[int]:
    """Per question: the 1-based rank of the first gold article in the top k, 0 if none."""
    return [
        next((i for i, d in enumerate(docs[:k], 1) if d in g), 0)
        for docs, g in zip(rankings, gold, strict=True)
    ]


def quality(ranks) -> dict:
    r = np.asarray(ranks)
    if r.size == 0:
        return {"recall": 0.0, "mrr": 0.0}
    return {
        "recall": float((r > 0).mean()),
        "mrr": float(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0).mean()),
    }


def _key(ranks) -> tuple[float, float]:
    q = quality(ranks)
    return q["recall"], q["mrr"]


def folds_for(ids: list[str]) -> np.ndarray:
    """Two stable halves of a dev set (the same split `bench dense` uses): datasets.splits.assign_split's
    sha256 rule with a half, restated here because retrieval sits below datasets."""
    import hashlib

    def half(key: str) -> bool:
        return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48) < 0.5

    return np.array([half(f"fold:{i}") for i in ids], dtype=np.int64)


def cross_validated(rows: list[dict], folds: np.ndarray) -> dict:
    """Weights chosen without peeking: for each half of the dev set, the row with the best (Recall, MRR) on
    the *other* half is scored on this half; the halves are then pooled."""
    held = np.zeros(len(folds), dtype=np.int64)
    chosen = []
    for f in (0, 1):
        train, test = folds != f, folds == f
        best = max(rows, key=lambda r: _key(np.array(r["ranks"])[train]))
        held[test] = np.array(best["ranks"])[test]
        chosen.append(best["setup"])
    return {"chosen": chosen, **quality(held)}


def candidates() -> list[dict]:
    return [
        {"fusion": f, "sparse_weight": w, "dense_weight": round(1.0 - w, 2)}
        for f in ("weighted", "rrf")
        for w in SPARSE_WEIGHTS
    ]


def setup_name(c: dict) -> str:
    return f"hybrid {c['fusion']} {c['sparse_weight']:.1f}/{c['dense_weight']:.1f}"


def calibrate_fusion(retriever, items, k: int = 5, rerank=None, fetch: int | None = None) -> dict:
    """Score every candidate on the dev items' answerable questions with `retriever`'s index, vectors and
    encoder; return the stored choice, the held-out (two-fold) result and BM25's, per fusion and overall.
    `rerank(question, hits)` (with `fetch` ≥ k hits asked of each first stage) scores what the answer path
    reads: every candidate, BM25 included, then goes through the same re-ranker."""
    answerable = [it for it in items if it.answerable]
    if not answerable:
        from dnfbot.errors import InputError

        raise InputError("fusion calibration needs answerable questions with gold_doc_ids")
    gold = [it.gold_doc_ids for it in answerable]
    qv = [retriever.encode_query(it.question) for it in answerable]
    n = max(k, fetch or k)

    def top(question: str, hits: list) -> list[str]:
        return [h.chunk.doc_id for h in (rerank(question, hits) if rerank else hits)[:k]]

    then = " + evidence re-ranking" if rerank else ""
    rows = []
    sparse_docs = [top(it.question, retriever.index.search(it.question, n)) for it in answerable]
    sparse = {"setup": "sparse only (BM25)" + then, "ranks": gold_ranks(sparse_docs, gold, k)}
    for c in candidates():
        r = retriever.with_settings("hybrid", **c)
        docs = [
            top(it.question, r.search_vector(it.question, v, n)) for it, v in zip(answerable, qv, strict=True)
        ]
        rows.append({"setup": setup_name(c) + then, **c, "ranks": gold_ranks(docs, gold, k)})
    folds = folds_for([it.id for it in answerable])
    best = max(rows, key=lambda r: _key(r["ranks"]))
    return {
        "k": k,
        "questions": len(answerable),
        "chosen": {key: best[key] for key in ("fusion", "sparse_weight", "dense_weight")},
        "chosen_on_dev": quality(best["ranks"]),
        "held_out": cross_validated(rows, folds),
        "held_out_weighted": cross_validated([r for r in rows if r["fusion"] == "weighted"], folds),
        "sparse": quality(sparse["ranks"]),
        "rows": [{k2: v for k2, v in r.items() if k2 != "ranks"} | quality(r["ranks"]) for r in rows],
    }


def store_weights(index_dir: Path, identity: str, result: dict, dev_set: str = "") -> dict:
    """Keep a calibration's choice with the index, under the dense model's identity."""
    path = Path(index_dir) / FUSION_FILE
    data = read_json(path) if path.exists() else {}
    data[identity] = {
        "settings": result["chosen"],
        "dev_set": dev_set,
        "questions": result["questions"],
        "k": result["k"],
        "chosen_on_dev": result["chosen_on_dev"],
        "held_out": {k: result["held_out"][k] for k in ("recall", "mrr", "chosen")},
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(path, data)
    return data[identity]


def stored_weights(index_dir: Path, identity: str) -> dict | None:
    path = Path(index_dir) / FUSION_FILE
    if not path.exists():
        return None
    try:
        entry = read_json(path).get(identity)
    except Exception:  # a damaged file only costs the calibration
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("settings"), dict) else None
