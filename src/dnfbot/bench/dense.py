"""`dnfbot bench dense`: what dense/hybrid retrieval costs per query, and whether fusion helps on the dev set.

- latency (a small model, e.g. a MiniLM-L6-shaped one): per query, sparse-only search; query encoding alone;
  dense and hybrid search given the query vector (fusion cost, encoding excluded). Paired per query.
- quality (e.g. the tiny embedder fine-tuned on pairs from the corpus): Recall@k / MRR@k on the dev set for
  sparse-only, dense-only and hybrid (weighted and RRF, default weights and a small sweep, all reported).
- throughput (`--throughput-only`, meant for a GPU): chunks/s encoding the corpus at a given dtype.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from dnfbot.config import Settings
from dnfbot.eval.retrieval import DevItem, load_devset

SWEEP = (0.3, 0.5, 0.7, 0.8, 0.9)  # sparse weight; dense weight = 1 − sparse weight


def _pcts(xs: list[float]) -> dict:
    a = np.array(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def _ranks(rankings: list[list[str]], items: list[DevItem], k: int) -> list[int]:
    """Per question: the 1-based rank of the first gold article in the top k, 0 if none."""
    return [
        next((i for i, d in enumerate(docs[:k], 1) if d in it.gold_doc_ids), 0)
        for docs, it in zip(rankings, items, strict=True)
    ]


def _quality(ranks: list[int]) -> dict:
    r = np.array(ranks)
    if r.size == 0:
        return {"recall": 0.0, "mrr": 0.0}
    return {
        "recall": float((r > 0).mean()),
        "mrr": float(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0).mean()),
    }


def cross_validated(rows: list[dict], folds: np.ndarray) -> dict:
    """Weights chosen without peeking: for each half of the dev set, the sweep row with the best
    (Recall, MRR) on the *other* half is scored on this half; the halves are then pooled."""
    held = np.zeros(len(folds), dtype=np.int64)
    chosen = []
    for f in (0, 1):
        train, test = folds != f, folds == f
        best = max(rows, key=lambda r: tuple(_quality(list(np.array(r["ranks"])[train])).values()))
        held[test] = np.array(best["ranks"])[test]
        chosen.append(best["setup"])
    return {"chosen": chosen, **_quality(list(held))}


def _with_model(settings: Settings, model: str) -> Settings:
    s = settings.model_copy(deep=True)
    s.dense = s.dense.model_copy(update={"model": model})
    return s


def _open(paths: list[str], settings: Settings, tmp: Path):
    from dnfbot.retrieval.dense import open_dense_retriever
    from dnfbot.retrieval.index import build_index, open_index

    result = build_index(paths, tmp, settings, force=True)
    idx, build = open_index(tmp, settings, refresh=False)
    return result, idx, open_dense_retriever(idx, build, settings, "dense")


def _variant(idx, dense, settings: Settings, **update):
    from dnfbot.retrieval.dense import DenseRetriever

    mode = update.pop("mode", "hybrid")
    return DenseRetriever(
        idx, dense.matrix, dense.model, mode, settings.dense.model_copy(update=update), dense.query_prefix
    )


def bench_quality(paths: list[str], items: list[DevItem], settings: Settings, model: str, k: int = 5) -> dict:
    from dnfbot.datasets.pairs import assign_split

    s = _with_model(settings, model)
    answerable = [it for it in items if it.answerable]
    with tempfile.TemporaryDirectory() as tmp:
        result, idx, dense = _open(paths, s, Path(tmp))
        qv = [dense.encode_query(it.question) for it in answerable]

        def run(fn) -> dict:
            docs = [
                [h.chunk.doc_id for h in fn(it.question, v)] for it, v in zip(answerable, qv, strict=True)
            ]
            ranks = _ranks(docs, answerable, k)
            return {**_quality(ranks), "ranks": ranks}

        d = s.dense
        rows = [
            {"setup": "sparse only (BM25)", **run(lambda q, v: idx.search(q, k))},
            {"setup": "dense only", **run(lambda q, v: dense.search_vector(q, v, k))},
        ]
        for fusion in ("weighted", "rrf"):
            for ws in SWEEP:
                r = _variant(idx, dense, s, fusion=fusion, sparse_weight=ws, dense_weight=round(1 - ws, 2))
                rows.append(
                    {
                        "setup": f"hybrid {fusion} {ws:.1f}/{1 - ws:.1f}",
                        "fusion": fusion,
                        "sparse_weight": ws,
                        "default": fusion == d.fusion
                        and abs(ws - d.sparse_weight) < 1e-9
                        and abs(1 - ws - d.dense_weight) < 1e-9,
                        **run(lambda q, v, r=r: r.search_vector(q, v, k)),
                    }
                )
    # two stable halves of the dev set (hash of the question id): weights picked on one, scored on the other
    folds = np.array([assign_split(f"fold:{it.id}", 0.5) == "valid" for it in answerable], dtype=np.int64)
    cv = {f: cross_validated([r for r in rows if r.get("fusion") == f], folds) for f in ("weighted", "rrf")}
    return {
        "model": model,
        "dense_build": result.build.manifest["dense"],
        "rows": rows,
        "cross_validated": cv,
        "questions": len(answerable),
    }


def bench_latency(
    paths: list[str], items: list[DevItem], settings: Settings, model: str, k: int = 5, rounds: int = 5
) -> dict:
    from dnfbot.retrieval.dense import encode

    s = _with_model(settings, model)
    with tempfile.TemporaryDirectory() as tmp:
        result, idx, dense = _open(paths, s, Path(tmp))
        weighted = _variant(idx, dense, s, fusion="weighted")
        rrf = _variant(idx, dense, s, fusion="rrf")
        lat: dict[str, list[float]] = {n: [] for n in ("sparse", "encode", "dense", "weighted", "rrf")}
        over_w, over_r = [], []
        for _ in range(rounds):
            for it in items:
                q = it.question
                t0 = time.perf_counter()
                idx.search(q, k)
                t1 = time.perf_counter()
                v = encode(dense.model, [dense.query_prefix + q])[0]  # no query cache: the model's real cost
                t2 = time.perf_counter()
                dense.search_vector(q, v, k)
                t3 = time.perf_counter()
                weighted.search_vector(q, v, k)
                t4 = time.perf_counter()
                rrf.search_vector(q, v, k)
                t5 = time.perf_counter()
                for name, dt in zip(lat, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    lat[name].append(dt)
                over_w.append((t4 - t3) - (t1 - t0))
                over_r.append((t5 - t4) - (t1 - t0))
    return {
        "model": model,
        "dense_build": result.build.manifest["dense"],
        "chunks": result.build.manifest["chunks"],
        "queries": len(items) * rounds,
        **{name: _pcts(v) for name, v in lat.items()},
        "hybrid_overhead_weighted_p50_ms": float(np.median(over_w) * 1000),
        "hybrid_overhead_rrf_p50_ms": float(np.median(over_r) * 1000),
    }


def bench_throughput(
    paths: list[str],
    settings: Settings,
    model: str,
    device: str | None,
    dtype: str | None,
    batch_size: int,
    max_seq_length: int | None,
) -> dict:
    """Encoding throughput over the corpus chunks (the GPU check: a bge-m3-sized model at float16)."""
    import torch

    from dnfbot.corpus import load_corpus
    from dnfbot.corpus.chunking import chunk_documents
    from dnfbot.retrieval.dense import encode, load_model, passage_text

    docs, _ = load_corpus(paths)
    texts = [passage_text(c) for c in chunk_documents(docs, settings.chunk.size, settings.chunk.overlap)]
    m = load_model(model, device=device, dtype=dtype)
    if max_seq_length:
        m.max_seq_length = max_seq_length
    tokens = sum(min(len(ids), m.max_seq_length) for ids in m.tokenizer(texts)["input_ids"])
    encode(m, texts[: batch_size * 2], batch_size)  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    encode(m, texts, batch_size)
    sync()
    dt = time.perf_counter() - t
    params = sum(p.numel() for p in m.parameters())
    return {
        "model": model,
        "parameters": params,
        "device": str(m.device),
        "dtype": dtype or "float32",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "chunks": len(texts),
        "tokens": tokens,
        "max_seq_length": m.max_seq_length,
        "batch_size": batch_size,
        "seconds": dt,
        "chunks_per_s": len(texts) / dt,
        "tokens_per_s": tokens / dt,
    }


def run_bench(
    paths: list[str],
    queries: Path,
    settings: Settings,
    *,
    model: str,
    small_model: str | None,
    k: int = 5,
    rounds: int = 5,
    threads: int = 1,
    write: bool = True,
    command: str = "",
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    items = load_devset(queries)
    latency = bench_latency(paths, items, settings, small_model or model, k, rounds)
    quality = bench_quality(paths, items, settings, model, k)
    md = to_markdown(latency, quality, k, len(items), paths, queries, threads, command)
    if write:
        from dnfbot.bench.report import update_section

        update_section("dense", md)
    return {"latency": latency, "quality": quality, "markdown": md}


def to_markdown(
    lat: dict, q: dict, k: int, n: int, paths: list[str], queries: Path, threads: int, command: str
) -> str:
    b = lat["dense_build"]
    lines = [
        "## Dense and hybrid retrieval (`dnfbot bench dense`)",
        "",
        f"Command: `{command}`" if command else "",
        f"Corpus {', '.join(paths)} ({lat['chunks']} chunks); dev set {queries} ({n} questions); "
        f"torch threads: {threads}. Models are random-init or fine-tuned tiny models built offline (see docs/dense.md).",
        "",
        f"### Latency per query ({lat['queries']} queries, model `{lat['model']}`, dim {b['dim']})",
        "",
        "| step | p50 (ms) | p95 (ms) |",
        "|---|---|---|",
        f"| sparse-only search (BM25, query tokenization included) | {lat['sparse']['p50_ms']:.3f} | {lat['sparse']['p95_ms']:.3f} |",
        f"| query encoding (the model, reported separately) | {lat['encode']['p50_ms']:.2f} | {lat['encode']['p95_ms']:.2f} |",
        f"| dense-only search, given the query vector | {lat['dense']['p50_ms']:.3f} | {lat['dense']['p95_ms']:.3f} |",
        f"| hybrid weighted search, given the query vector | {lat['weighted']['p50_ms']:.3f} | {lat['weighted']['p95_ms']:.3f} |",
        f"| hybrid RRF search, given the query vector | {lat['rrf']['p50_ms']:.3f} | {lat['rrf']['p95_ms']:.3f} |",
        "",
        f"Hybrid overhead over sparse-only (paired per query, p50; encoding excluded): weighted "
        f"**{lat['hybrid_overhead_weighted_p50_ms']:.3f} ms**, RRF **{lat['hybrid_overhead_rrf_p50_ms']:.3f} ms** "
        "(target <= 5 ms).",
        f"Index encoding on this CPU: {b['encoded']} chunks in {b['encode_seconds']:.1f} s "
        f"({b['chunks_per_s']} chunks/s).",
        "",
        f"### Quality on the dev set ({q['questions']} answerable questions, model `{q['model']}`)",
        "",
        f"| set-up | Recall@{k} | MRR@{k} |",
        "|---|---|---|",
    ]
    for r in q["rows"]:
        name = r["setup"] + (" (default)" if r.get("default") else "")
        lines.append(f"| {name} | {r['recall']:.3f} | {r['mrr']:.3f} |")
    sparse, dense = q["rows"][0]["recall"], q["rows"][1]["recall"]
    best = max(r["recall"] for r in q["rows"][2:])
    default = next((r for r in q["rows"] if r.get("default")), None)
    lines.append("")
    if default:
        verdict = "does not hurt" if default["recall"] >= max(sparse, dense) - 1e-9 else "**hurts**"
        lines.append(
            f"Default fusion ({default['setup']}): Recall@{k} {default['recall']:.3f} vs sparse {sparse:.3f} / "
            f"dense {dense:.3f} — fusion {verdict} against the better single retriever."
        )
    lines.append(
        f"Best hybrid in the sweep: Recall@{k} {best:.3f}. The sweep is on the dev set itself: "
        "treat the best row as optimistic."
    )
    for fusion, cv in q["cross_validated"].items():
        verdict = "does not hurt" if cv["recall"] >= max(sparse, dense) - 1e-9 else "**hurts**"
        lines.append(
            f"Hybrid {fusion}, weights chosen on the other half of the dev set (2-fold, chosen: "
            f"{' / '.join(c.split()[-1] for c in cv['chosen'])}): Recall@{k} **{cv['recall']:.3f}**, "
            f"MRR@{k} {cv['mrr']:.3f} — {verdict} against the better single retriever."
        )
    return "\n".join(line for line in lines if line is not None)


def throughput_markdown(r: dict, command: str) -> str:
    return "\n".join(
        [
            "## Dense encoding throughput (`dnfbot bench dense --throughput-only`)",
            "",
            f"Command: `{command}`",
            "",
            "| model | params | device | dtype | chunks | max tokens | batch | chunks/s | tokens/s |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| `{r['model']}` | {r['parameters'] / 1e6:.0f}M | {r['gpu'] or r['device']} | {r['dtype']} | {r['chunks']} | "
            f"{r['max_seq_length']} | {r['batch_size']} | {r['chunks_per_s']:.1f} | {r['tokens_per_s']:.0f} |",
        ]
    )
