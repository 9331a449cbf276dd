"""`dnfbot bench retrieval`: build time, query latency and dev-set quality, beside the original set-up.

The original project split articles with LangChain's RecursiveCharacterTextSplitter (3000/500) and retrieved
with LangChain's BM25Retriever on whitespace tokens. Both run here on the same cleaned documents and dev set.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.config import Settings
from dnfbot.eval.metrics import first_hit, latency_ms, mrr, recall
from dnfbot.eval.retrieval import DevItem, evaluate, load_devset
from dnfbot.options import option

LATENCY_ROUNDS = 20
ANSWER_SETS = (Path("eval/players.jsonl"), Path("eval/dev.jsonl"), Path("eval/followups.jsonl"))


@dataclass
class RetrievalBench:
    """Index build time, query latency p50/p95, quality — side by side with the original retrieval."""

    section = "retrieval"
    corpus: list[Path] | None = option(
        None, "guide JSON, JSONL or folder; repeatable (default: the configured corpus)"
    )
    queries: Path = option(Path("eval/dev.jsonl"), "dev set JSONL (see eval/README.md)")
    baseline: bool = option(True, "compare with the original LangChain BM25 set-up (needs the [bench] extra)")
    k: int = option(5, "cut-off for Recall@k and MRR@k")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        from dnfbot.config import load_settings

        settings = load_settings(self.config)
        paths = settings.corpus_paths(self.corpus)
        items = load_devset(self.queries)
        rows = [bench_dnfbot(paths, items, settings, self.k)]
        if self.baseline:
            rows.append(bench_original(paths, items, self.k))
        return {"results": rows, "markdown": to_markdown(rows, self.k, len(items), paths, self.queries)}


def _quality(rankings: list[list[str]], items: list[DevItem], k: int) -> dict:
    ranks = [first_hit(docs, it.gold_doc_ids, k) for docs, it in zip(rankings, items, strict=True)]
    return {f"recall@{k}": recall(ranks, k), f"mrr@{k}": mrr(ranks, k)}


def bench_dnfbot(
    paths: list[str], items: list[DevItem], settings: Settings, k: int = 5, queries_for_answers=ANSWER_SETS
) -> dict:
    from dnfbot.rag import RAG
    from dnfbot.retrieval.index import build_index, open_index
    from dnfbot.retrieval.tokenizer import KoreanTokenizer, get_tokenizer

    t = time.perf_counter()
    get_tokenizer()
    tok_load = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        result = build_index(paths, Path(tmp), settings, force=True)
        idx, _ = open_index(Path(tmp), settings, refresh=False)
        rag = RAG(idx, settings)
        answerable = [it for it in items if it.answerable]
        rankings = [[h.chunk.doc_id for h in idx.search(it.question, k)] for it in answerable]
        lat = []
        for _ in range(LATENCY_ROUNDS):
            for it in items:
                KoreanTokenizer.clear_cache()  # cold queries: tokenization really timed
                t = time.perf_counter()
                idx.search(it.question, k)  # query tokenization included
                lat.append(time.perf_counter() - t)
        full = evaluate(rag, items, k=k)
        answers = bench_answers(rag, queries_for_answers)
    return {
        "name": "dnfbot (Kiwi morphemes + bm25s)",
        "tokenizer_load_s": tok_load,
        "build_s": result.seconds,
        "chunks": result.build.manifest["chunks"],
        **latency_ms(lat),
        **_quality(rankings, answerable, k),
        "answer_hit": full["answer_hit"],
        "refusal_accuracy": full["refusal_accuracy"],
        "false_refusal": full["false_refusal"],
        "ask_p50_ms": full["ask_ms_p50"],
        "answers": answers,
    }


def bench_answers(rag, sets=ANSWER_SETS) -> dict:
    """`dnfbot eval answers` on the test split of each answer set that exists here."""
    from dnfbot.eval.answers import evaluate_answers, evaluate_followups, load_followups

    out = {}
    for path in sets:
        if not path.exists():
            continue
        if path.name.startswith("followups"):
            r = evaluate_followups(rag, load_followups(path), "test")
        else:
            r = evaluate_answers(rag, load_devset(path), "test")
        r.pop("rows", None)
        out[path.name] = r
    return out


def bench_original(paths: list[str], items: list[DevItem], k: int = 5) -> dict:
    try:
        from langchain_community.retrievers import BM25Retriever
        from langchain_core.documents import Document as LCDocument
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError as e:
        return {"name": "original (LangChain)", "error": f"install the [bench] extra: {e}"}
    from dnfbot.corpus import load_corpus

    docs, _ = load_corpus(paths)
    t = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=3000, chunk_overlap=500)
    lc_docs = splitter.split_documents(
        [LCDocument(page_content=d.text, metadata={"doc_id": d.doc_id, "title": d.title}) for d in docs]
    )
    retriever = BM25Retriever.from_documents(lc_docs, k=k)
    build_s = time.perf_counter() - t
    answerable = [it for it in items if it.answerable]
    rankings = [[d.metadata["doc_id"] for d in retriever.invoke(it.question)] for it in answerable]
    lat = []
    for _ in range(max(1, LATENCY_ROUNDS // 4)):
        for it in items:
            t = time.perf_counter()
            retriever.invoke(it.question)
            lat.append(time.perf_counter() - t)
    return {
        "name": "original (LangChain splitter 3000/500 + BM25Retriever, whitespace)",
        "build_s": build_s,
        "chunks": len(lc_docs),
        **latency_ms(lat),
        **_quality(rankings, answerable, k),
    }


def to_markdown(rows: list[dict], k: int, n: int, paths: list[str], queries: Path) -> str:
    lines = [
        "## Retrieval (`dnfbot bench retrieval`)",
        "",
        f"Command: `dnfbot bench retrieval --queries {queries}` over {', '.join(paths)}; {n} dev questions.",
        "Latency is per query with query tokenization, index in memory; build includes loading, cleaning, "
        "chunking, tokenizing and writing the index.",
        "",
        f"| set-up | chunks | build (s) | query p50 (ms) | query p95 (ms) | Recall@{k} | MRR@{k} | answer-hit | refusal acc. | false refusals | ask p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error']} |||||||||")
            continue
        lines.append(
            f"| {r['name']} | {r['chunks']} | {r['build_s']:.2f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
            f"{r[f'recall@{k}']:.3f} | {r[f'mrr@{k}']:.3f} | {_f(r.get('answer_hit'))} | "
            f"{_f(r.get('refusal_accuracy'))} | {_f(r.get('false_refusal'))} | "
            + (f"{r['ask_p50_ms']:.1f} |" if "ask_p50_ms" in r else "— |")
        )
    ours = rows[0]
    lines.append("")
    lines.append(
        f"Kiwi model load (once per process, not in the build time above): {ours['tokenizer_load_s']:.2f} s."
    )
    if len(rows) > 1 and "error" not in rows[1]:
        speed = rows[1]["p50_ms"] / max(ours["p50_ms"], 1e-9)
        lines.append(f"Query latency p50: {speed:.1f}x lower than the original set-up.")
    lines += ["", *answers_markdown(ours.get("answers") or {})]
    return "\n".join(lines)


def answers_markdown(answers: dict) -> list[str]:
    """What a player reads, on the test split (`dnfbot eval answers --split test`)."""
    if not answers:
        return []
    lines = [
        "### Answers (test split; `dnfbot eval answers --split test`)",
        "",
        "| set | kind | n | answer-hit | false refusals | refusal acc. | glued | junk | repeated | … cuts | median chars | sources used |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in answers.items():
        for kind, s in [("all", r["overall"]), *sorted(r.get("by_kind", {}).items())]:
            lines.append(
                f"| {name} | {kind} | {s['questions']} | {_f(s.get('answer_hit'))} | {_f(s.get('false_refusal'))} | "
                f"{_f(s.get('refusal_accuracy'))} | {_f(s.get('glued'))} | {_f(s.get('junk'))} | "
                f"{_f(s.get('repeated'))} | {_f(s.get('cut'))} | {s.get('median_chars', '—')} | {_f(s.get('contributed'))} |"
            )
        if "offtopic_refused" in r:
            lines.append(
                f"| {name} | off-topic + chit-chat refused | | {_f(r['offtopic_refused'])} |||||||||"
            )
        if "repeats_earlier" in r:
            lines.append(
                f"| {name} | follow-ups repeating the earlier answer | | {_f(r['repeats_earlier'])} |||||||||"
            )
    return lines


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"
