"""What a player reads: answer-hit, refusals and readability of the answers, per kind of question.

Sets (eval/): `players.jsonl` (questions written as players write them, with kind and a tune/test split),
`dev.jsonl` (the first dev set), `followups.jsonl` (two-turn conversations; the gold is for the second turn).
Readability is measured on every answer given:
- glued: a sentence with a Korean sentence ending glued to the next word ("있습니다무의장막의"), by cleaning's
  rule or by Kiwi's tags (a final ending straight before a new word) — the second is independent of cleaning
- junk: a sentence that is a heading or page furniture (table of contents, changelog, Ctrl+F hint, link dump)
- repeated: the same sentence twice in one answer (or a follow-up repeating the previous answer)
- cut: the answer ends in "…" or has a "… " cut inside
- contributed: the share of listed sources that a sentence of the answer comes from
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.corpus.clean import glued_endings
from dnfbot.corpus.sentences import is_heading, junk_kind
from dnfbot.errors import InputError
from dnfbot.eval.metrics import percentile
from dnfbot.eval.retrieval import DevItem, answer_hit
from dnfbot.generate.extractive import norm
from dnfbot.io import iter_jsonl
from dnfbot.retrieval.tokenizer import KoreanTokenizer, get_tokenizer


@dataclass
class FollowUp:
    id: str
    turns: list[str]
    follow_up: bool
    item: DevItem  # the gold for the last turn


def load_followups(path: str | Path) -> list[FollowUp]:
    out = []
    for i, r in enumerate(iter_jsonl(path), start=1):
        turns = r.get("turns")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) and t for t in turns):
            raise InputError(f"{path}: record {i}: 'turns' must list at least two questions")
        item = DevItem(
            str(r.get("id", i)),
            turns[-1],
            [str(g) for g in r.get("gold_doc_ids") or []],
            r.get("answer"),
            bool(r.get("gold_doc_ids")),
            [str(a) for a in r.get("answer_alts") or []],
            "follow_up" if r.get("follow_up") else "standalone",
            str(r.get("split") or ""),
        )
        out.append(FollowUp(item.id, turns, bool(r.get("follow_up")), item))
    if not out:
        raise InputError(f"{path}: no conversations")
    return out


def readability(ans) -> dict:
    """Per-answer readability flags (see the module docstring)."""
    texts = [s["text"] for s in ans.sentences] or [ans.answer]
    keys = [norm(t) for t in texts]
    cited = {s.get("source") for s in ans.sentences if s.get("source") is not None}
    return {
        "glued": any(glued_endings(t) or get_tokenizer().glued_sentence_ends(t) for t in texts),
        "junk": any(junk_kind(t) or is_heading(t) for t in texts),
        "repeated": len(set(keys)) < len(keys),
        "cut": ans.answer.rstrip().endswith("…") or "… " in ans.answer,
        "chars": len(ans.answer),
        "sentences": len(texts),
        "contributed": (len(cited) / len(ans.sources)) if ans.sources else 1.0,
    }


def _row(item: DevItem, ans, seconds: float) -> dict:
    row = {
        "id": item.id,
        "kind": item.kind,
        "split": item.split,
        "answerable": item.answerable,
        "answered": ans.answered,
        "answer_hit": answer_hit(item, ans) if item.answerable else False,
        "coverage": round(ans.coverage, 4),
        "ms": round(seconds * 1000, 2),
        "question": item.question,
        "answer": ans.answer,
    }
    if ans.answered:
        row.update(readability(ans))
    return row


def _summary(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable"]]
    un = [r for r in rows if not r["answerable"]]
    given = [r for r in rows if r["answered"]]
    out: dict = {"questions": len(rows), "answerable": len(ans), "unanswerable": len(un)}
    if ans:
        out["answer_hit"] = sum(r["answer_hit"] for r in ans) / len(ans)
        out["false_refusal"] = sum(not r["answered"] for r in ans) / len(ans)
    if un:
        out["refusal_accuracy"] = sum(not r["answered"] for r in un) / len(un)
    if given:
        for flag in ("glued", "junk", "repeated", "cut"):
            out[flag] = sum(r[flag] for r in given) / len(given)
        out["median_chars"] = statistics.median(r["chars"] for r in given)
        out["contributed"] = sum(r["contributed"] for r in given) / len(given)
    return out


def evaluate_answers(rag, items: list[DevItem], split: str | None = None) -> dict:
    """Ask every question (cold: no cached query tokens); the summary overall, per kind and per split."""
    if split:
        items = [it for it in items if not it.split or it.split == split]
    rows = []
    for it in items:
        KoreanTokenizer.clear_cache()
        t = time.perf_counter()
        ans = rag.ask(it.question)
        rows.append(_row(it, ans, time.perf_counter() - t))
    report = {
        "overall": _summary(rows),
        "ask_ms_p50": percentile([r["ms"] for r in rows], 50) if rows else 0.0,
    }
    report["by_kind"] = {
        k: _summary([r for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows})
    }
    offtopic = [r for r in rows if r["kind"] in ("offtopic", "chitchat")]
    if offtopic:
        report["offtopic_refused"] = sum(not r["answered"] for r in offtopic) / len(offtopic)
    report["rows"] = rows
    return report


def evaluate_followups(rag, convs: list[FollowUp], split: str | None = None) -> dict:
    """Each conversation turn by turn; the last turn is scored, and must not repeat an earlier answer."""
    if split:
        convs = [c for c in convs if not c.item.split or c.item.split == split]
    rows = []
    for conv in convs:
        history: list[dict] = []
        earlier: set[str] = set()
        for q in conv.turns[:-1]:
            a = rag.ask(q, history=history)
            history += [{"role": "user", "content": q}, {"role": "assistant", "content": a.answer}]
            earlier |= {norm(s["text"]) for s in a.sentences}
        t = time.perf_counter()
        ans = rag.ask(conv.turns[-1], history=history)
        row = _row(conv.item, ans, time.perf_counter() - t)
        row["repeats_earlier"] = any(norm(s["text"]) in earlier for s in ans.sentences)
        rows.append(row)
    report = {"overall": _summary(rows)}
    report["by_kind"] = {
        k: _summary([r for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows})
    }
    report["repeats_earlier"] = sum(r["repeats_earlier"] for r in rows) / max(1, len(rows))
    report["rows"] = rows
    return report


def calibrate_answers(rag, items: list[DevItem], max_false_refusal: float = 0.05) -> dict:
    """The min_coverage with the best balanced accuracy on the tune split whose false refusals stay within
    bounds (the tune split only: the test split is for reporting)."""
    from dnfbot.eval.retrieval import calibrate_threshold

    per = []
    for it in items:
        if it.split == "test":
            continue
        hits, query, _, _, _, ev = rag.read(it.question)
        per.append(
            {"answerable": it.answerable, "coverage": 0.0 if query.chitchat or not hits else ev.coverage}
        )
    return calibrate_threshold(per, max_false_refusal, steps=1000)


def format_answers_report(name: str, r: dict) -> str:
    o = r["overall"]
    lines = [f"{name}: {o['questions']} questions ({o['answerable']} answerable, {o['unanswerable']} not)"]

    def fmt(s: dict) -> str:
        parts = []
        for key, label in (
            ("answer_hit", "hit"),
            ("false_refusal", "false-refusal"),
            ("refusal_accuracy", "refusal-acc"),
            ("glued", "glued"),
            ("junk", "junk"),
            ("repeated", "repeat"),
            ("cut", "cut"),
            ("median_chars", "median chars"),
            ("contributed", "sources used"),
        ):
            if key in s:
                v = s[key]
                parts.append(f"{label} {v:.0f}" if key == "median_chars" else f"{label} {v:.3f}")
        return "  ".join(parts)

    lines.append("  all        " + fmt(o))
    for kind, s in r.get("by_kind", {}).items():
        lines.append(f"  {kind:<10} " + fmt(s) + f"  (n={s['questions']})")
    if "offtopic_refused" in r:
        lines.append(f"  off-topic and chit-chat refused: {r['offtopic_refused']:.3f}")
    if "repeats_earlier" in r:
        lines.append(f"  follow-ups repeating the earlier answer: {r['repeats_earlier']:.3f}")
    if "ask_ms_p50" in r:
        lines.append(f"  ask p50 {r['ask_ms_p50']:.1f} ms (cold query tokens)")
    return "\n".join(lines)
