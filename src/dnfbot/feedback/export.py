"""`dnfbot feedback export --as rm|dpo|sft|pairs|eval`: the players' judgement as training and evaluation data.

Questions are grouped first: the same question (normalised as the data builders do: NFKC, lower case, no spaces
or punctuation) or a near-duplicate (character-trigram Jaccard >= `dedup_threshold`, equal numbers) is one
group, and a group's records share one split (a stable hash of its first question, as `dnfbot data …` splits by
question), so a held-out question never has a near-twin in training. Output order and ids depend only on the
log's contents: the same log gives byte-identical files.

- rm / dpo: preference pairs within a group: chosen = a player's correction, or an answer rated 👍; rejected = an
  answer rated 👎 (a correction also rejects the answer it corrects). The prompt is the rejected answer's question.
  Both write the pair records of `dnfbot data rm` — {"prompt": question, "chosen", "rejected", "id", "source",
  "split", "pair"} plus the answer ids — which `train rm` and `train dpo` both read (each trainer puts the
  prompt into the model's format itself); `--as dpo` is the same file under the name of the trainer it feeds.
- sft: one `data sft` record per distinct correction.
- pairs: `data pairs` records for `train embedder`: the question and the passage an upvoted answer cited; a hard
  negative ("negative") from another article: a passage a downvoted answer in the group cited, else the best
  hit of the trace that the answer did not use. Needs the index, to read the passages.
- eval: `eval/` items for review: questions refused although a near-duplicate got an upvoted answer (answerable,
  gold = the articles that answer cited), and downvoted answers (kind feedback_wrong / feedback_missing,
  `needs_review`: a person adds gold_doc_ids and the answer before they join players.jsonl).

Citation markers (" [1]") are taken out of answer texts: they point into one answer's source list.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot import NO_INFO_ANSWER
from dnfbot.datasets.build import sft_record
from dnfbot.datasets.splits import assign_split, normalize_question
from dnfbot.errors import InputError
from dnfbot.feedback.store import iter_answers, read_feedback, verdicts
from dnfbot.io import write_jsonl

FORMATS = ("rm", "dpo", "sft", "pairs", "eval")
_MARKER = re.compile(r"\s*\[\d+\]")
_DIGITS = re.compile(r"\d+")


# The near-duplicate test of `dnfbot data …` (datasets/build.dedup): character trigrams of the normalised
# question, Jaccard >= threshold, and the same numbers ("3단계" and "4단계" stay apart).
def _trigrams(s: str) -> set[str]:
    return {s[i : i + 3] for i in range(len(s) - 2)} if len(s) >= 3 else {s}


def _jaccard(a: set[str], b: set[str]) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if inter else 0.0


def _numbers(q: str) -> list[str]:
    return _DIGITS.findall(q)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:16]


def clean_answer(text: str) -> str:
    return " ".join(_MARKER.sub("", text).split())


@dataclass
class Rated:
    """One logged answer with the verdict of its feedback."""

    row: dict
    rating: str | None = None
    correction: str | None = None

    @property
    def question(self) -> str:
        return self.row["question"]

    @property
    def answered(self) -> bool:
        return bool(self.row["answered"])

    @property
    def text(self) -> str:
        return clean_answer(self.row["answer"])


@dataclass
class Group:
    key: str  # split key: the first question, normalised
    members: list[Rated] = field(default_factory=list)

    @property
    def split_key(self) -> str:
        return f"q:{self.key}"


def group_questions(items: list[Rated], threshold: float = 0.9, probes: int = 4) -> list[Group]:
    """Groups of the same or near-duplicate questions, in order of first appearance (see the module docstring)."""
    keys = [normalize_question(it.question) for it in items]
    grams = [_trigrams(k) for k in keys]
    df: dict[str, int] = defaultdict(int)
    for gs in set(map(frozenset, grams)):
        for g in gs:
            df[g] += 1
    groups: list[Group] = []
    by_key: dict[str, int] = {}
    index: dict[str, list[int]] = defaultdict(list)  # trigram → groups whose first question has it
    firsts: list[int] = []  # item index of each group's first question
    for i, it in enumerate(items):
        g = by_key.get(keys[i])
        if g is None and threshold <= 1:
            rare = sorted(grams[i], key=lambda t: (df[t], t))[:probes]
            nums = _numbers(it.question)
            for cand in sorted({j for t in rare for j in index[t]}):
                f = firsts[cand]
                if _jaccard(grams[i], grams[f]) >= threshold and nums == _numbers(items[f].question):
                    g = cand
                    break
        if g is None:
            g = len(groups)
            groups.append(Group(keys[i]))
            firsts.append(i)
            for t in grams[i]:
                index[t].append(g)
        by_key.setdefault(keys[i], g)
        groups[g].members.append(it)
    return groups


def load_rated(db, *, all_answers: bool = False) -> list[Rated]:
    """Answers that got feedback (or every answer), oldest first, each with its latest verdict."""
    v = verdicts(read_feedback(db))
    out = []
    for row in iter_answers(db, None if all_answers else set(v)):
        verdict = v.get(row["id"], {})
        out.append(Rated(row, verdict.get("rating"), verdict.get("correction")))
    return out


# --- preference pairs ---------------------------------------------------------------------------------------
def preference_pairs(groups: list[Group], valid_fraction: float) -> list[dict]:
    out, seen = [], set()
    for g in groups:
        chosen: list[tuple[str, str, str]] = []  # (text, why, answer id)
        rejected: list[Rated] = []
        for m in g.members:
            if m.correction:
                chosen.append((" ".join(m.correction.split()), "correction", m.row["id"]))
            elif m.rating == "up":
                chosen.append((m.text if m.answered else NO_INFO_ANSWER, "up", m.row["id"]))
            if m.rating == "down" or m.correction:
                rejected.append(m)
        split = assign_split(g.split_key, valid_fraction)
        for text, why, cid in chosen:
            for r in rejected:
                bad = r.text if r.answered else NO_INFO_ANSWER
                if not text or not bad or text == bad:
                    continue
                key = (g.key, text, bad)
                if key in seen:
                    continue
                seen.add(key)
                out.append({
                    "prompt": " ".join(r.question.split()),
                    "chosen": text,
                    "rejected": bad,
                    "id": f"feedback:{_digest(g.key, text, bad)}",
                    "source": f"feedback:{why}",
                    "split": split,
                    "pair": f"{why}>down",
                    "chosen_answer_id": cid,
                    "rejected_answer_id": r.row["id"],
                })  # fmt: skip
    return out


def sft_records(groups: list[Group], valid_fraction: float) -> list[dict]:
    out, seen = [], set()
    for g in groups:
        split = assign_split(g.split_key, valid_fraction)
        for m in g.members:
            if not m.correction:
                continue
            text = " ".join(m.correction.split())
            if (g.key, text) in seen:
                continue
            seen.add((g.key, text))
            q = " ".join(m.question.split())
            out.append(sft_record(q, text, id=f"feedback:{_digest(g.key, text)}", source="feedback:correction",
                                  doc_id="", split=split, answer_id=m.row["id"]))  # fmt: skip
    return out


# --- embedder pairs -----------------------------------------------------------------------------------------
def _chunk(index, doc_id: str, part: int):
    for i in index.doc_chunks(doc_id) or []:
        c = index.chunks[i]
        if c.part == part:
            return c
    return None


def embedder_pairs(groups: list[Group], index, valid_fraction: float) -> tuple[list[dict], int]:
    from dnfbot.retrieval.dense import passage_text

    out, seen, missing = [], set(), 0
    for g in groups:
        split = assign_split(g.split_key, valid_fraction)
        wrong = []  # passages cited by downvoted answers of this group: known not to answer it
        for m in g.members:
            if m.rating == "down" and m.answered:
                wrong += [(s["doc_id"], s["part"]) for s in m.row["trace"].get("sources", [])]
        for m in g.members:
            if m.rating != "up" or not m.answered:
                continue
            trace = m.row["trace"]
            cited = [(s["doc_id"], s["part"]) for s in trace.get("sources", [])]
            cited_docs = {d for d, _ in cited}
            neg = None
            for doc, part in wrong + [(h["doc_id"], h["part"]) for h in trace.get("hits", [])]:
                if doc not in cited_docs:
                    neg = _chunk(index, doc, part)
                    if neg is not None:
                        break
            q = " ".join(m.question.split())
            for doc, part in cited:
                c = _chunk(index, doc, part)
                if c is None:
                    missing += 1
                    continue
                if (q, c.chunk_id) in seen:
                    continue
                seen.add((q, c.chunk_id))
                rec = {"query": q, "passage": passage_text(c), "chunk_id": c.chunk_id, "doc_id": c.doc_id,
                       "source": "feedback:up", "split": split, "answer_id": m.row["id"]}  # fmt: skip
                if neg is not None:
                    rec.update(negative=passage_text(neg), negative_chunk_id=neg.chunk_id)
                out.append(rec)
    return out, missing


# --- eval items ---------------------------------------------------------------------------------------------
def eval_items(groups: list[Group]) -> list[dict]:
    out, seen = [], set()
    for g in groups:
        liked = [m for m in g.members if m.rating == "up" and m.answered and m.row["trace"].get("sources")]
        gold = list(dict.fromkeys(s["doc_id"] for m in liked for s in m.row["trace"]["sources"]))
        corrections = list(dict.fromkeys(" ".join(m.correction.split()) for m in g.members if m.correction))
        cands = []  # (priority, order, member, reason): one item per question, the one with gold first
        for i, m in enumerate(g.members):
            if not m.answered and m.row.get("kind") != "chitchat" and gold:
                cands.append((0, i, m, "refused_but_upvoted_elsewhere"))
            elif m.rating == "down":
                cands.append((1, i, m, "feedback_wrong" if m.answered else "feedback_missing"))
        chosen = {}
        for _, i, m, reason in sorted(cands, key=lambda c: (c[0], c[1])):
            chosen.setdefault(normalize_question(m.question), (i, m, reason))
        for _i, m, reason in sorted(chosen.values(), key=lambda c: c[0]):
            q = " ".join(m.question.split())
            key = normalize_question(q)
            if key in seen:
                continue
            answerable = reason == "refused_but_upvoted_elsewhere"
            golds = gold if answerable else []
            seen.add(key)
            out.append({
                "id": f"f{_digest(key)[:8]}",
                "question": q,
                "kind": reason if reason != "refused_but_upvoted_elsewhere" else "feedback_refused",
                "gold_doc_ids": golds,
                "answer": None,
                "answer_alts": [],
                "evidence": None,
                "answerable": answerable,
                "split": "test",
                "needs_review": True,
                "feedback": {"reason": reason, "bot_answer": m.text, "answer_id": m.row["id"],
                             "corrections": corrections},
            })  # fmt: skip
    return out


# --- the verb -----------------------------------------------------------------------------------------------
EMPTY_HINT = {
    "rm": "no preference pairs yet: a question needs a correction or a 👍 answer, and a 👎 answer",
    "dpo": "no preference pairs yet: a question needs a correction or a 👍 answer, and a 👎 answer",
    "sft": "no corrections yet (/bad <the right answer> in chat, 고쳐 쓰기 on the page, correction in the API)",
    "pairs": "no upvoted answers with sources yet",
    "eval": "no eval candidates yet (refused questions answered 👍 elsewhere, or 👎 answers)",
}


def export(
    db,
    kind: str,
    out: str | Path,
    *,
    index=None,
    valid_fraction: float = 0.1,
    dedup_threshold: float = 0.9,
) -> dict:
    if kind not in FORMATS:
        raise InputError(f"--as {kind}: choose from {', '.join(FORMATS)}")
    if not 0 <= valid_fraction < 1:
        raise InputError(f"--valid-fraction {valid_fraction}: must be in [0, 1)")
    items = load_rated(db, all_answers=kind == "eval")
    groups = group_questions(items, dedup_threshold)
    extra: dict = {}
    if kind in ("rm", "dpo"):
        rows = preference_pairs(
            groups, valid_fraction
        )  # dpo: the same pair records (train dpo reads data rm's)
    elif kind == "sft":
        rows = sft_records(groups, valid_fraction)
    elif kind == "pairs":
        if index is None:
            raise InputError(
                "--as pairs reads the cited passages from the index: give --index-dir (or build one)"
            )
        rows, extra["missing_chunk"] = embedder_pairs(groups, index, valid_fraction)
        extra["with_negative"] = sum("negative" in r for r in rows)
    else:
        rows = eval_items(groups)
    if not rows:
        raise InputError(f"{EMPTY_HINT[kind]}; nothing written to {out}")
    write_jsonl(out, rows)
    n_valid = sum(r.get("split") == "valid" for r in rows)
    return {"out": str(out), "as": kind, "records": len(rows), "train": len(rows) - n_valid, "valid": n_valid,
            "answers_read": len(items), "question_groups": len(groups), **extra}  # fmt: skip
