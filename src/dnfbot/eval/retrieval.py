"""Dev-set evaluation: Recall@k, MRR@k, answer-hit rate, refusal accuracy, and threshold calibration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot.errors import InputError
from dnfbot.eval.metrics import mrr, percentile, recall
from dnfbot.io import iter_records, require_text
from dnfbot.retrieval.tokenizer import KoreanTokenizer


@dataclass
class DevItem:
    id: str
    question: str
    gold_doc_ids: list[str]
    answer: str | None
    answerable: bool
    answer_alts: list[str] = field(default_factory=list)  # other wordings of the answer that also count
    kind: str = ""  # guide | slang | unanswerable | offtopic | chitchat ("" in older sets)
    split: str = ""  # tune | test ("" = both)
    evidence: str | None = None  # the sentence of a gold article that holds the answer

    @property
    def answers(self) -> list[str]:
        return [a for a in [self.answer, *self.answer_alts] if a]


def load_devset(path: str | Path) -> list[DevItem]:
    items = []
    for i, (where, r) in enumerate(iter_records(path), start=1):
        require_text(r, "question", where)
        answerable = bool(r.get("answerable", bool(r.get("gold_doc_ids"))))
        gold = [str(g) for g in r.get("gold_doc_ids") or []]
        if answerable and not gold:
            raise InputError(f"{where}: answerable question without 'gold_doc_ids'")
        alts = r.get("answer_alts") or []
        if not isinstance(alts, list):
            raise InputError(f"{where}: 'answer_alts' must be a list")
        kind = str(r.get("kind") or ("guide" if answerable else "unanswerable"))
        items.append(
            DevItem(
                str(r.get("id", i)),
                r["question"],
                gold,
                r.get("answer"),
                answerable,
                [str(a) for a in alts],
                kind,
                str(r.get("split") or ""),
                r.get("evidence"),
            )
        )
    if not items:
        raise InputError(f"{path}: empty dev set")
    return items


def _norm(s: str) -> str:
    return "".join(s.split())


def answer_hit(item: DevItem, ans) -> bool:
    """Answered, and the answer text holds the gold answer (or one of its alternatives), spaces ignored."""
    text = _norm(ans.answer)
    return bool(ans.answered and any(_norm(a) in text for a in item.answers))


def evaluate(rag, items: list[DevItem], k: int = 5, calibrate: bool = False) -> dict:
    """Run every question through search and ask; aggregate the metrics."""
    per = []
    lat_search, lat_ask = [], []
    for it in items:
        # Latencies are for cold queries: no tokens cached from earlier calls.
        KoreanTokenizer.clear_cache()
        t = time.perf_counter()
        hits = rag.search(it.question, k)
        lat_search.append(time.perf_counter() - t)
        docs = [h.chunk.doc_id for h in hits]
        rank = next((i for i, d in enumerate(docs, 1) if d in it.gold_doc_ids), None)
        KoreanTokenizer.clear_cache()
        t = time.perf_counter()
        ans = rag.ask(it.question)
        lat_ask.append(time.perf_counter() - t)
        hit = answer_hit(it, ans)
        per.append(
            {
                "id": it.id,
                "answerable": it.answerable,
                "rank": rank,
                "answered": ans.answered,
                "answer_hit": hit,
                "coverage": round(ans.coverage, 4),
            }
        )
    answerable = [p for p in per if p["answerable"]]
    unanswerable = [p for p in per if not p["answerable"]]
    n_a, n_u = max(1, len(answerable)), max(1, len(unanswerable))
    report = {
        "queries": len(per),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "k": k,
        f"recall@{k}": recall(p["rank"] or 0 for p in answerable),
        f"mrr@{k}": mrr(p["rank"] or 0 for p in answerable),
        "answer_hit": sum(p["answer_hit"] for p in answerable) / n_a,
        "refusal_accuracy": sum(not p["answered"] for p in unanswerable) / n_u,
        "false_refusal": sum(not p["answered"] for p in answerable) / n_a,
        "min_coverage": rag.settings.answer.min_coverage,
        "search_ms_p50": percentile(lat_search, 50) * 1000,
        "ask_ms_p50": percentile(lat_ask, 50) * 1000,
        "per_query": per,
    }
    if calibrate:
        report["calibration"] = calibrate_threshold(per)
    return report


def calibrate_threshold(per: list[dict], max_false_refusal: float = 0.10, steps: int = 100) -> dict:
    """The coverage threshold with the best balanced accuracy whose false-refusal rate stays within bounds."""
    pos = [p["coverage"] for p in per if p["answerable"]]
    neg = [p["coverage"] for p in per if not p["answerable"]]
    best = None
    for step in range(0, steps + 1):
        th = round(step / steps, 4)
        fr = sum(c < th for c in pos) / max(1, len(pos))
        ra = sum(c < th for c in neg) / max(1, len(neg))
        if fr > max_false_refusal:
            continue
        score = (ra + (1 - fr)) / 2
        if best is None or score > best["balanced_accuracy"] + 1e-9:
            best = {"threshold": th, "refusal_accuracy": ra, "false_refusal": fr, "balanced_accuracy": score}
    return best or {}


def format_report(r: dict) -> str:
    k = r["k"]
    lines = [
        f"queries: {r['queries']} ({r['answerable']} answerable, {r['unanswerable']} unanswerable)",
        f"Recall@{k}:          {r[f'recall@{k}']:.3f}",
        f"MRR@{k}:             {r[f'mrr@{k}']:.3f}",
        f"answer-hit:         {r['answer_hit']:.3f}",
        f"refusal accuracy:   {r['refusal_accuracy']:.3f}  (min_coverage {r['min_coverage']})",
        f"false refusals:     {r['false_refusal']:.3f}",
        f"search p50: {r['search_ms_p50']:.2f} ms   ask p50: {r['ask_ms_p50']:.1f} ms",
    ]
    if r.get("calibration"):
        c = r["calibration"]
        lines.append(
            f"calibrated min_coverage: {c['threshold']} → refusal accuracy {c['refusal_accuracy']:.3f}, "
            f"false refusals {c['false_refusal']:.3f}"
        )
    return "\n".join(lines)
