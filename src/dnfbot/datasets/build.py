"""`dnfbot data sft | rm | ppo`: training sets from `dnfbot synth qa` records (and KoChatGPT-format imports).

Every builder does the same three things, deterministically (same inputs → byte-identical files):

1. de-duplicates near-identical questions: questions are normalised (NFKC, lower case, no spaces or
   punctuation); equal keys are duplicates, and so are questions whose character-trigram Jaccard similarity is
   >= `dedup_threshold` (0.9 by default; candidates found through an inverted index over each question's
   rarest trigrams, so it stays fast on tens of thousands of questions) unless their numbers differ
   ("3단계" vs "4단계" are different questions). The first occurrence is kept.
2. assigns a stable split (datasets/splits.py): 'valid' when sha256(key) falls in the first `valid_fraction`
   of the hash space, else 'train', with key = the article (doc_id, so no held-out article is seen in training)
   or the question. A record's split never depends on the other records, so adding data never moves old ones.
3. writes one JSONL file with a "split" field on every record (`dnfbot train sft` sends split=valid to
   evaluation), plus `<out>.train.jsonl` / `<out>.valid.jsonl` on request.

Formats (see docs/synth.md):
- SFT: {"prompt": "### 질문: {q}\\n\\n### 답변: ", "completion": answer, "text": prompt + answer + eos, …};
  answers chosen with `kinds` (long/medium/short, one record each), optionally passage records
  ("'{subject}'에 대한 설명 혹은 이야기입니다." → the passage), which teach the model the guides' own wording.
- RM: ranking records {"prompt", "completion_0", "completion_1", "completion_2", "ranking"} (KoChatGPT's reward
  format; ranking[i] is completion_i's rank, 0 = best) and pairwise {"prompt", "chosen", "rejected"}: the three
  pairs (best, middle), (best, worst), (middle, worst) of every ranking record. "prompt" is the bare question.
- PPO: {"prompt", "split"} with the bare question, from both splits by default (`train ppo` trains on split=train
  and evaluates on split=valid, the questions held out of SFT/RM), mixed with imported
  KoChatGPT prompts by ratio.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnfbot.datasets.splits import assign_split, check_split_options, normalize_question, split_key
from dnfbot.errors import InputError
from dnfbot.formats import EOS, format_prompt, format_sft_text
from dnfbot.io import iter_records, require_text, write_jsonl
from dnfbot.options import build, option

if TYPE_CHECKING:
    from dnfbot.config import ChunkSettings

KINDS = ("long", "medium", "short")
PASSAGE_PROMPT = "'{subject}'에 대한 설명 혹은 이야기입니다."
DEFAULT_RANKING = "long>medium>short"
_DIGITS = re.compile(r"\d+")


# --- options -----------------------------------------------------------------------------------------------------


@dataclass
class DataOptions:
    """What every builder shares: dedup, split and the mix of imported records."""

    valid_fraction: float = option(0.05, "share of records in the 'valid' split (stable hash)")
    split_by: str = option("doc", "doc (held-out articles) | question")
    dedup_threshold: float = option(
        0.9, "trigram Jaccard above which questions are duplicates (>1: exact only)"
    )
    import_ratio: float | None = option(
        None, "imported records per own record (stable sample); default: all of them"
    )

    def validate(self) -> None:
        check_split_options(self.valid_fraction, self.split_by)
        if self.import_ratio is not None and self.import_ratio < 0:
            raise InputError(f"--import-ratio {self.import_ratio}: must be >= 0")


@dataclass
class SplitFilesOption:
    split_files: bool = option(False, "also write <out>.train.jsonl and <out>.valid.jsonl")


@dataclass
class SFTDataOptions(SplitFilesOption, DataOptions):
    kinds: str = option("long", "answers that become completions: long,medium,short", flag="--answers")
    passages: bool = option(False, "also '{subject}에 대한 설명…' → passage records")


@dataclass
class RMDataOptions(SplitFilesOption, DataOptions):
    ranking: str = option(DEFAULT_RANKING, "best first, e.g. long>medium>short")
    ranking_out: Path | None = option(None, "ranking-format JSONL (default: <out stem>.ranking.jsonl)")


@dataclass
class PPODataOptions(DataOptions):
    questions: str = option(
        "all",
        "which QA questions: all (both splits: PPO trains on train, evaluates on valid) | valid | train",
    )
    limit: int | None = option(None, "at most N prompts (keeps the mix)")

    def validate(self) -> None:
        super().validate()
        if self.questions not in ("valid", "train", "all"):
            raise InputError(f"--questions {self.questions}: choose valid, train or all")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit {self.limit}: must be at least 1")


# --- reading -----------------------------------------------------------------------------------------------------


def _records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) from a JSONL file or a JSON array (KoChatGPT files are JSON arrays); allow_torn_tail: a
    qa.jsonl that a running (or killed) `synth qa` is still appending to."""
    return list(iter_records(path, allow_torn_tail=True))


def load_qa(paths: list[str | Path]) -> list[dict]:
    """Records of `dnfbot synth qa` (question, long, medium, short, subject, doc_id, chunk_id, id)."""
    out = []
    for path in paths:
        before = len(out)
        for where, r in _records(path):
            rec = {k: require_text(r, k, where) for k in ("question", *KINDS)}
            rec.update(
                id=str(r.get("id") or _digest(rec["question"], rec["long"])),
                doc_id=str(r.get("doc_id", "")),
                chunk_id=str(r.get("chunk_id", "")),
                subject=str(r.get("subject", "")),
                source=f"synth:{r.get('generator', 'unknown')}",
            )
            out.append(rec)
        if len(out) == before:  # a 0-record dataset downstream helps nobody: say which input was empty
            raise InputError(
                f"{path}: no QA records (an empty file: run `dnfbot synth qa --out {path}` first)"
            )
    return out


class ImportReport:
    """Imported records that were skipped (public datasets have a few empty prompts), with the first reason."""

    def __init__(self) -> None:
        self.skipped = 0
        self.first: str | None = None

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.first = self.first or reason


def _import(path: str | Path, make, report: ImportReport | None) -> list[dict]:
    out = []
    for w, r in _records(path):
        try:
            out.append(make(w, r))
        except InputError as e:
            if report is None:
                raise
            report.skip(str(e))
    return out


def import_sft(path: str | Path, report: ImportReport | None = None) -> list[dict]:
    """KoChatGPT SFT format: [{"prompt", "completion", …}] (JSON array or JSONL)."""

    def make(w: str, r: dict) -> dict:
        return {
            "question": require_text(r, "prompt", w),
            "completion": require_text(r, "completion", w),
            "source": "import:sft",
        }

    return _import(path, make, report)


def import_rm(path: str | Path, report: ImportReport | None = None) -> list[dict]:
    """KoChatGPT RM format: [{"prompt", "completion_0", "completion_1", "completion_2", "ranking"}]."""

    def make(w: str, r: dict) -> dict:
        comps = [require_text(r, f"completion_{i}", w) for i in range(3)]
        ranking = r.get("ranking")
        if not (isinstance(ranking, list) and sorted(ranking) == [0, 1, 2]):
            raise InputError(f"{w}: 'ranking' must be a permutation of [0, 1, 2] (rank of each completion)")
        return {
            "question": require_text(r, "prompt", w),
            "completions": comps,
            "ranking": ranking,
            "source": "import:rm",
        }

    return _import(path, make, report)


def import_prompts(path: str | Path, report: ImportReport | None = None) -> list[dict]:
    """KoChatGPT PPO format: [{"prompt"}] (JSON array or JSONL)."""

    def make(w: str, r: dict) -> dict:
        return {"question": require_text(r, "prompt", w), "source": "import:ppo"}

    return _import(path, make, report)


# --- dedup and split ---------------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:16]


def _trigrams(s: str) -> set[str]:
    return {s[i : i + 3] for i in range(len(s) - 2)} if len(s) >= 3 else {s}


def dedup(records: list[dict], threshold: float = 0.9, probes: int = 4) -> tuple[list[dict], int]:
    """Records minus near-identical questions (first kept); returns (kept, removed).

    threshold > 1 turns the near-duplicate check off (exact normalised matches are still removed).
    Candidates are the kept questions containing one of this question's `probes` rarest trigrams (corpus-wide
    document frequency): a question with Jaccard >= 0.9 shares almost all trigrams, so it almost surely
    shares a rare one, and the long posting lists of common trigrams ("알려주") are never scanned."""
    keys = [normalize_question(r["question"]) for r in records]
    grams = [_trigrams(k) for k in keys]
    df = Counter(g for gs in grams for g in gs)
    seen: set[str] = set()
    index: dict[str, list[int]] = defaultdict(list)
    kept, removed = [], 0
    for i, r in enumerate(records):
        if keys[i] in seen:
            removed += 1
            continue
        rare = sorted(grams[i], key=lambda g: (df[g], g))[:probes]
        if threshold <= 1:
            cands = {j for g in rare for j in index[g]}
            nums = _numbers(r["question"])
            if any(
                _jaccard(grams[i], grams[j]) >= threshold and nums == _numbers(records[j]["question"])
                for j in cands
            ):
                removed += 1
                continue
            for g in grams[i]:
                index[g].append(i)
        seen.add(keys[i])
        kept.append(r)
    return kept, removed


def _numbers(q: str) -> list[str]:
    return _DIGITS.findall(q)


def _jaccard(a: set[str], b: set[str]) -> float:
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter) if inter else 0.0


def take_imports(imported: list[dict], n_own: int, ratio: float | None) -> list[dict]:
    """All imported records, or round(ratio * n_own) of them (a stable hash-ordered sample) when ratio is set."""
    if ratio is None:
        return imported
    n = min(len(imported), round(ratio * n_own)) if n_own else len(imported)
    order = sorted(range(len(imported)), key=lambda i: _digest(imported[i]["question"], str(i)))
    return [imported[i] for i in sorted(order[:n])]


def _write(out: str | Path, rows: list[dict], split_files: bool) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    files = {"out": str(out)}
    if split_files:
        for split in ("train", "valid"):
            p = out.with_name(f"{out.stem}.{split}.jsonl")
            write_jsonl(p, [r for r in rows if r["split"] == split])
            files[f"{split}_out"] = str(p)
    n_valid = sum(r.get("split") == "valid" for r in rows)
    return {**files, "records": len(rows), "train": len(rows) - n_valid, "valid": n_valid}


# --- SFT ---------------------------------------------------------------------------------------------------------


def parse_kinds(kinds: str) -> list[str]:
    out = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in out if k not in KINDS]
    if bad or not out:
        raise InputError(f"--answers {kinds}: choose from long, medium, short (comma-separated)")
    return list(dict.fromkeys(out))


def sft_record(question: str, answer: str, **extra) -> dict:
    """The SFT record: prompt in the shared format, the bare answer as completion, and the full training text."""
    return {
        "prompt": format_prompt(question),
        "completion": answer.strip(),
        "text": format_sft_text(question, answer, EOS),
        "question": question.strip(),
        **extra,
    }


def build_sft(
    qa: list[str | Path],
    out: str | Path,
    *,
    imports: list[str | Path] = (),
    corpus: list[str] | None = None,
    chunk: ChunkSettings | None = None,
    **options: Any,
) -> dict:
    """SFT records from QA files (+ passages of `corpus`, + imports); options: SFTDataOptions."""
    o = build(SFTDataOptions, options, "data sft")
    answer_kinds = parse_kinds(o.kinds)
    records, removed = dedup(load_qa(qa), o.dedup_threshold)
    rows = []
    for r in records:
        split = assign_split(split_key(r, o.split_by), o.valid_fraction)
        for k in answer_kinds:
            rows.append(
                sft_record(
                    r["question"],
                    r[k],
                    id=f"{r['id']}:{k}",
                    source=f"{r['source']}:{k}",
                    doc_id=r["doc_id"],
                    split=split,
                )
            )
    n_passage = 0
    if o.passages:
        if not corpus:
            raise InputError("--passages needs --corpus (the corpus the QA records were synthesised from)")
        from dnfbot.config import ChunkSettings
        from dnfbot.corpus import load_chunks

        chunk_ids = {r["chunk_id"] for r in records}
        for c in load_chunks(corpus, chunk or ChunkSettings()).chunks:
            if c.chunk_id not in chunk_ids:
                continue  # only passages the QA set covers: the answers were written from them
            q = PASSAGE_PROMPT.format(subject=c.title)
            split = assign_split(split_key({"doc_id": c.doc_id, "question": q}, o.split_by), o.valid_fraction)
            rows.append(
                sft_record(
                    q, c.text, id=f"passage:{c.chunk_id}", source="passage", doc_id=c.doc_id, split=split
                )
            )
            n_passage += 1
    n_own = len(rows)
    imported, removed_imp, report = _imports(imports, import_sft, o, n_own)
    rows += [
        sft_record(
            r["question"], r["completion"], id=r["id"], source=r["source"], doc_id="", split=r["split"]
        )
        for r in imported
    ]
    summary = _write(out, rows, o.split_files)
    return {
        **summary,
        "qa_records": len(records),
        "duplicates_removed": removed + removed_imp,
        "answers": answer_kinds,
        "passage_records": n_passage,
        "imported": len(rows) - n_own,
        "import_skipped": report.skipped,
        "import_skipped_first": report.first,
        "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
    }


def _imports(paths: list[str | Path], read, o: Any, n_own: int) -> tuple[list[dict], int, ImportReport]:
    """The imported records to mix in beside `n_own` own ones (de-duplicated, `o.import_ratio` per own record),
    each with an "id" and a "split" (by question: an import has no article); (records, duplicates removed,
    skipped-records report)."""
    imported, report = [], ImportReport()
    for path in paths:
        imported += read(path, report)
    if not imported:
        return [], 0, report
    kept, removed = dedup(imported, o.dedup_threshold)
    taken = [
        {
            **r,
            "id": f"import:{_digest(r['question'])}",
            "split": assign_split(split_key(r, "question"), o.valid_fraction),
        }
        for r in take_imports(kept, n_own, o.import_ratio)
    ]
    return taken, removed, report


# --- reward model ------------------------------------------------------------------------------------------------


def parse_ranking(rule: str) -> list[str]:
    """'long>medium>short' → ['long', 'medium', 'short'] (best first)."""
    order = [k.strip() for k in rule.split(">")]
    if sorted(order) != sorted(KINDS):
        raise InputError(
            f"--ranking {rule}: order all of long, medium, short with '>', e.g. {DEFAULT_RANKING}"
        )
    return order


def ranking_record(question: str, completions: list[str], ranking: list[int], **extra) -> dict:
    return {
        "prompt": question,
        **{f"completion_{i}": c for i, c in enumerate(completions)},
        "ranking": ranking,
        **extra,
    }


def pairs_from_ranking(rec: dict) -> list[dict]:
    """The three (chosen, rejected) pairs of a ranking record: (1st, 2nd), (1st, 3rd), (2nd, 3rd)."""
    best_first = sorted(range(3), key=lambda i: rec["ranking"][i])
    extra = {k: rec[k] for k in ("id", "source", "split") if k in rec}
    out = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        ca, cb = best_first[a], best_first[b]
        out.append(
            {
                "prompt": rec["prompt"],
                "chosen": rec[f"completion_{ca}"],
                "rejected": rec[f"completion_{cb}"],
                **extra,
                "pair": f"{a}>{b}",
            }
        )
    return out


def build_rm(
    qa: list[str | Path], out: str | Path, *, imports: list[str | Path] = (), **options: Any
) -> dict:
    """Ranking records and their (chosen, rejected) pairs from QA files (+ imports); options: RMDataOptions."""
    o = build(RMDataOptions, options, "data rm")
    order = parse_ranking(o.ranking)
    records, removed = dedup(load_qa(qa), o.dedup_threshold) if qa else ([], 0)
    ranked = []
    for r in records:
        # completions in the fixed order long, medium, short; ranking[i] = rank of completion_i (0 = best)
        ranked.append(
            ranking_record(
                r["question"],
                [r[k] for k in KINDS],
                [order.index(k) for k in KINDS],
                id=r["id"],
                source=r["source"],
                split=assign_split(split_key(r, o.split_by), o.valid_fraction),
            )
        )
    n_own = len(ranked)
    imported, removed_imp, report = _imports(imports, import_rm, o, n_own)
    ranked += [
        ranking_record(
            r["question"], r["completions"], r["ranking"], id=r["id"], source=r["source"], split=r["split"]
        )
        for r in imported
    ]
    if not ranked:
        raise InputError("no ranking records: give --qa FILE and/or --import FILE")
    pairs = [p for rec in ranked for p in pairs_from_ranking(rec)]
    summary = _write(out, pairs, o.split_files)
    out = Path(out)
    ranking_path = o.ranking_out or out.with_name(f"{out.stem}.ranking.jsonl")
    write_jsonl(ranking_path, ranked)
    return {
        **summary,
        "pairs": len(pairs),
        "ranking_out": str(ranking_path),
        "ranking_records": len(ranked),
        "ranking": ">".join(order),
        "qa_records": n_own,
        "duplicates_removed": removed + removed_imp,
        "imported": len(ranked) - n_own,
        "import_skipped": report.skipped,
        "import_skipped_first": report.first,
    }


# --- PPO ---------------------------------------------------------------------------------------------------------


def build_ppo(
    qa: list[str | Path], out: str | Path, *, imports: list[str | Path] = (), **options: Any
) -> dict:
    """{"prompt", "source", "split"} records: the QA questions of split `questions` (valid = held out of SFT/RM
    training with the same --valid-fraction/--split-by), then imported prompts (all, or `import_ratio` per
    own prompt); `limit` caps the total, keeping the mix. Options: PPODataOptions."""
    o = build(PPODataOptions, options, "data ppo")
    records, removed = dedup(load_qa(qa), o.dedup_threshold) if qa else ([], 0)
    own = []
    for r in records:
        split = assign_split(split_key(r, o.split_by), o.valid_fraction)
        if o.questions in ("all", split):
            own.append({"prompt": r["question"], "source": r["source"], "split": split})
    imported, removed_imp, report = _imports(imports, import_prompts, o, len(own))
    # imported prompts are all for training: the held-out ones are our own questions
    taken = [{"prompt": r["question"], "source": r["source"], "split": "train"} for r in imported]
    if o.limit is not None and len(own) + len(taken) > o.limit:
        share = len(own) / (len(own) + len(taken))
        n_own = min(len(own), round(o.limit * share))
        own, taken = own[:n_own], taken[: o.limit - n_own]
    rows, removed_cross = dedup([{**r, "question": r["prompt"]} for r in own + taken], 2.0)
    rows = [{k: v for k, v in r.items() if k != "question"} for r in rows]
    if not rows:
        raise InputError(
            "no PPO prompts: the QA file has no questions in that split and nothing was imported "
            "(try --questions all, or --import ../shared/prompts/kochatgpt_3_PPO.json)"
        )
    write_jsonl(out, rows)
    return {
        "out": str(out),
        "records": len(rows),
        "from_qa": sum(not r["source"].startswith("import") for r in rows),
        "imported": sum(r["source"].startswith("import") for r in rows),
        "questions": o.questions,
        "import_skipped": report.skipped,
        "import_skipped_first": report.first,
        "duplicates_removed": removed + removed_imp + removed_cross,
    }
