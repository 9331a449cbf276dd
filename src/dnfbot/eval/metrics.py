"""Retrieval metrics and latency percentiles, defined once for evaluations and benchmarks.

A query's rank is the 1-based position of its first relevant item, 0 when none was retrieved (within k).
Recall@k = share of queries with 0 < rank <= k; MRR@k = mean of 1/rank over them (0 for a miss).
Percentiles interpolate linearly between the closest ranks, as numpy.percentile does by default.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence


def first_hit(ranked: Sequence[str], relevant: Collection[str], k: int | None = None) -> int:
    """1-based rank of the first relevant id among the first k (all when k is None); 0 if there is none."""
    return next((i for i, x in enumerate(ranked[:k], 1) if x in relevant), 0)


def recall(ranks: Iterable[int], k: int | None = None) -> float:
    ranks = [int(r) for r in ranks]
    return sum(0 < r <= (k or r) for r in ranks) / len(ranks) if ranks else 0.0


def mrr(ranks: Iterable[int], k: int | None = None) -> float:
    ranks = [int(r) for r in ranks]
    return sum(1 / r for r in ranks if 0 < r <= (k or r)) / len(ranks) if ranks else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of non-empty `values`, linear interpolation (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_ms(
    seconds: Sequence[float],
    qs: Sequence[float] = (50, 95),
    *,
    digits: int | None = None,
    with_max: bool = False,
) -> dict[str, float | None]:
    """{"p50_ms": …, "p95_ms": …[, "max_ms"]} of durations given in seconds; None values for no durations."""
    keys = [f"p{q:g}_ms" for q in qs] + (["max_ms"] if with_max else [])
    if not seconds:
        return dict.fromkeys(keys)
    ms = [s * 1000 for s in seconds]
    vals = [percentile(ms, q) for q in qs] + ([max(ms)] if with_max else [])
    return {k: v if digits is None else round(v, digits) for k, v in zip(keys, vals, strict=True)}
