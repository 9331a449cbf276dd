"""The answer-sentence ranker: a linear model over the extractive scorer's features, trained in seconds.

For each answerable question of the tune half of the eval sets, every candidate sentence the extractive back end
would consider is a row of generate/extractive.FEATURES; the sentences that hold the gold answer (in a gold
article) are the positives. The loss is listwise — softmax over one question's candidates, cross-entropy on
its positives (so the model learns to put a right sentence first, which is what a player reads) — plus an L2
pull towards the hand-tuned weights, so a small training set cannot wander far. Plain numpy, full-batch
gradient descent: no weights from anywhere, no GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnfbot.eval.retrieval import DevItem
from dnfbot.generate.extractive import FEATURES, HAND_WEIGHTS, ExtractiveGenerator, norm


@dataclass
class Group:
    """One question's candidates."""

    x: np.ndarray  # (candidates, features)
    positive: np.ndarray  # bool (candidates,)


def build_groups(rag, items: list[DevItem]) -> list[Group]:
    """Feature rows of every candidate sentence for each answerable item that has a right candidate."""
    scorer = ExtractiveGenerator()
    groups = []
    for it in items:
        if not it.answerable or not it.answers:
            continue
        prep = rag.prepare(it.question)
        r = prep.request
        if not r.analyses:
            continue
        x, where = scorer.features(r.query, r.analyses, r.evidence, r.passage_ranks)
        gold = [norm(a) for a in it.answers]
        pos = np.array(
            [
                r.analyses[p].chunk.doc_id in it.gold_doc_ids and any(g in norm(s.text) for g in gold)
                for p, s in where
            ],
            dtype=bool,
        )
        if pos.any() and len(pos) > 1:
            groups.append(Group(x, pos))
    return groups


def loss_and_grad(
    w: np.ndarray, groups: list[Group], l2: float, prior: np.ndarray
) -> tuple[float, np.ndarray]:
    loss, grad = 0.0, np.zeros_like(w)
    for g in groups:
        z = g.x @ w
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        loss -= float(np.log((p * g.positive).sum() + 1e-12))
        # d(-log Σ_pos p)/dz = p - p·pos/Σ_pos p
        q = p * g.positive
        q /= q.sum()
        grad += g.x.T @ (p - q)
    n = max(1, len(groups))
    diff = w - prior
    return loss / n + l2 * float(diff @ diff), grad / n + 2 * l2 * diff


def fit(groups: list[Group], l2: float = 0.01, steps: int = 400, lr: float = 0.5) -> np.ndarray:
    """Gradient descent from the hand weights."""
    prior = HAND_WEIGHTS.copy()
    w = prior.copy()
    for _ in range(steps):
        _, grad = loss_and_grad(w, groups, l2, prior)
        w -= lr * grad
    return w


def top1(weights: np.ndarray, groups: list[Group]) -> float:
    """Share of questions whose best-scored candidate is a right one."""
    if not groups:
        return 0.0
    return sum(bool(g.positive[int(np.argmax(g.x @ weights))]) for g in groups) / len(groups)


def save(weights: np.ndarray, path: Path, meta: dict) -> None:
    from dnfbot.io import atomic_write_text

    body = {"features": list(FEATURES), "weights": [round(float(v), 6) for v in weights], **meta}
    atomic_write_text(path, json.dumps(body, ensure_ascii=False, indent=2) + "\n")


def train(rag, tune: list[DevItem], held_out: list[DevItem] | None = None, l2: float = 0.001) -> dict:
    """Fit on `tune`; report top-1 of the hand weights and of the fit on both sets. Returns the model dict."""
    groups = build_groups(rag, tune)
    if not groups:
        from dnfbot.errors import InputError

        raise InputError("no answerable question with a right candidate sentence to train the ranker on")
    w = fit(groups, l2=l2)
    report = {
        "questions": len(groups),
        "l2": l2,
        "top1_hand_tune": top1(HAND_WEIGHTS, groups),
        "top1_tune": top1(w, groups),
    }
    if held_out:
        held = build_groups(rag, held_out)
        report.update(
            held_out_questions=len(held),
            top1_hand_held_out=top1(HAND_WEIGHTS, held),
            top1_held_out=top1(w, held),
        )
    return {
        "weights": w,
        "report": {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()},
    }
