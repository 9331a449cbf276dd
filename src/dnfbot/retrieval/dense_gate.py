"""Dense similarity as a second signal for the evidence gate — never the gate on its own.

The gate (retrieval/evidence.py) answers only when the retrieved passages cover enough of the question's terms.
Dense similarity alone is a worse gate: any question finds *some* passage at cosine 0.8 with e5 ("오늘 서울
날씨" included), so its AUC is well below coverage's (docs/dense.md). But the two err on different questions —
coverage is fooled by a question that shares words with a guide and asks something else, the cosine by one
that is about the game but not answered here — so a small dense term added to coverage separates answerable
from unanswerable questions slightly better than coverage alone.

    score = coverage + weight · (max_cosine − center)

`max_cosine` is the best cosine between the question and its retrieved passages (DenseRetriever.max_cosine);
`center` is a typical cosine (e5-small: ~0.82 between a question and its best passage), so that the
threshold on `score` stays on coverage's scale. `fit_weight` picks the weight on a dev set by AUC; the gate then
compares `score` with `answer.min_coverage` as before. The lead wires this into the gate (issue 11 owns it).
"""

from __future__ import annotations

import numpy as np

# Measured on the dev set with e5-small (docs/dense.md): the weight chosen there, and the cosine centre.
DEFAULT_WEIGHT = 1.0
DEFAULT_CENTER = 0.82
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def max_cosine(query_vector: np.ndarray, passage_vectors: np.ndarray) -> float:
    """The best cosine between a normalised query vector and the (normalised) vectors of its hits; 0 when
    there are no hits (nothing retrieved is no evidence)."""
    if len(passage_vectors) == 0:
        return 0.0
    return float(np.max(np.asarray(passage_vectors, dtype=np.float32) @ np.asarray(query_vector, np.float32)))


def combined_score(
    coverage: float | np.ndarray,
    cosine: float | np.ndarray,
    weight: float = DEFAULT_WEIGHT,
    center: float = DEFAULT_CENTER,
) -> float | np.ndarray:
    """Coverage plus a dense term; weight 0 is coverage alone. With no hits (cosine 0) the dense term is
    negative: retrieval that found nothing never raises the score."""
    return coverage + weight * (np.asarray(cosine) - center) if weight else coverage


def auc(scores, labels) -> float:
    """Area under the ROC curve: the chance that an answerable question (label true) scores above an
    unanswerable one, ties counting half."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs both answerable and unanswerable questions")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def fit_weight(coverage, cosine, labels, weights=WEIGHTS, center: float = DEFAULT_CENTER) -> dict:
    """The weight with the best AUC on these questions (the smallest among equals: coverage stays the main
    signal), with the AUC of every weight tried."""
    cov, cos = np.asarray(coverage, dtype=np.float64), np.asarray(cosine, dtype=np.float64)
    table = {float(w): auc(combined_score(cov, cos, w, center), labels) for w in weights}
    best = max(table, key=lambda w: (round(table[w], 9), -w))
    return {
        "weight": best,
        "center": center,
        "auc": table[best],
        "auc_coverage": auc(cov, labels),
        "auc_dense": auc(cos, labels),
        "table": table,
    }
