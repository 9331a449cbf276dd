"""Build, open and refresh the retrieval index (one place that knows the whole pipeline)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.config import Settings
from dnfbot.corpus import load_chunks
from dnfbot.corpus.clean import CLEANING_VERSION
from dnfbot.errors import IndexMissingError
from dnfbot.retrieval import store
from dnfbot.retrieval.encoders import AUTO, NONE, resolve_backend, resolve_model  # cheap: no torch import
from dnfbot.retrieval.sparse import SparseIndex, chunk_spans_from_doc
from dnfbot.retrieval.tokenizer import TOKENIZER_VERSION, KoreanTokenizer, char_bigrams, get_tokenizer


@dataclass
class BuildResult:
    build: store.Build
    rebuilt: bool
    seconds: float

    def to_dict(self) -> dict:
        m = self.build.manifest
        return {
            "index_dir": str(self.build.path.parent),
            "build": self.build.path.name,
            "rebuilt": self.rebuilt,
            "seconds": round(self.seconds, 3),
            "documents": m["documents"],
            "chunks": m["chunks"],
            "corpus": m["load_report"],
        }


def index_params(settings: Settings) -> dict:
    r, d = settings.retrieval, settings.dense
    params = {
        "chunk_size": settings.chunk.size,
        "chunk_overlap": settings.chunk.overlap,
        "cleaning": CLEANING_VERSION,
        "tokenizer": TOKENIZER_VERSION,
        "title_boost": r.title_boost,
        "bm25": {"k1": r.bm25_k1, "b": r.bm25_b},
    }
    model = resolve_model(d.model)
    if d.model == NONE:  # BM25 only by choice: kept in the build, so that `auto` does not add e5 to it later
        params["dense"] = {"model": NONE}
    elif model:
        params["dense"] = {
            "model": model,
            "query_prefix": d.query_prefix,
            "passage_prefix": d.passage_prefix,
        }
        backend = resolve_backend(model, d.backend)
        if backend != "sentence-transformers":  # absent = the original back end: older fingerprints hold
            params["dense"]["backend"] = backend
    return params


def build_index(
    corpus: list[str | Path],
    index_dir: Path,
    settings: Settings,
    *,
    force: bool = False,
    tokenizer: KoreanTokenizer | None = None,
    embedding_cache: Path | None = None,
) -> BuildResult:
    """Build (or keep, when the corpus and settings are unchanged) the index for `corpus` in `index_dir`.
    Dense vectors are cached in `embedding_cache` (default index_dir/embedding-cache)."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    sources = store.describe_sources(corpus)
    params = index_params(settings)  # dense.model auto → e5-small or nothing, decided here once
    fp = store.fingerprint(sources, params)
    if not force:
        try:
            live = store.current_build(index_dir)
            if live.fingerprint == fp:
                return BuildResult(live, False, time.perf_counter() - t0)
        except IndexMissingError:
            pass
    tok = tokenizer or get_tokenizer()
    chunks, docs, report = load_chunks(corpus, settings.chunk)
    by_doc: dict[str, list] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    doc_spans = tok.tokenize_spans_many([d.text for d in docs])
    title_tokens = tok.tokenize_many([d.title for d in docs])
    boost = params["title_boost"]
    morph_tokens, chunk_spans = [], []
    for d, spans, ttoks in zip(docs, doc_spans, title_tokens, strict=True):
        for cspans in chunk_spans_from_doc(spans, by_doc.get(d.doc_id, [])):
            morph_tokens.append(ttoks * boost + [t for t, _, _ in cspans])
            chunk_spans.append(cspans)
    bigram_tokens = [char_bigrams(c.title) * boost + char_bigrams(c.text) for c in chunks]
    r = settings.retrieval
    sparse = SparseIndex.build(chunks, morph_tokens, bigram_tokens, tok, r.bm25_k1, r.bm25_b, r.bigram_weight)
    sparse.class_boost = r.class_boost
    tmp = store.begin_build(index_dir)
    try:
        sparse.save(tmp, chunk_spans)
        dense_info = None
        model = params.get("dense", {}).get("model")
        if model and model != NONE:
            from dnfbot.retrieval.dense import build_dense  # the [dense] extra

            dense = settings.dense.model_copy(update={"model": model})
            dense_info = build_dense(
                tmp, chunks, dense, cache_dir=embedding_cache or index_dir / "embedding-cache"
            )
        manifest = {
            "format_version": store.FORMAT_VERSION,
            "fingerprint": fp,
            "sources": sources,
            "params": params,
            "documents": len(docs),
            "chunks": len(chunks),
            "load_report": report.to_dict(),
            "dense": dense_info,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        build = store.commit_build(index_dir, tmp, manifest)
    except BaseException:
        store.abort_build(tmp)
        raise
    return BuildResult(build, True, time.perf_counter() - t0)


def with_build_dense(settings: Settings, build: store.Build) -> Settings:
    """Settings that name no dense model (`auto`, the default) take the build's: a model given once with
    `index build --dense-model` (or `none`) is not a settings change that should rebuild the index without it."""
    dense = build.manifest["params"].get("dense")
    if not dense or (settings.dense.model and settings.dense.model != AUTO):
        return settings
    return settings.model_copy(update={"dense": settings.dense.model_copy(update=dense)})


def is_stale(build: store.Build, settings: Settings) -> bool | None:
    """True if the sources or settings changed since the build; None if a source is gone (can't tell)."""
    paths = [Path(s["path"]) for s in build.manifest["sources"]]
    if not all(p.exists() for p in paths):
        return None
    sources = store.describe_sources(paths)
    return store.fingerprint(sources, index_params(with_build_dense(settings, build))) != build.fingerprint


def open_index(
    index_dir: Path, settings: Settings, *, refresh: bool = True, on_rebuild=None
) -> tuple[SparseIndex, store.Build]:
    """Load the live index; rebuild it first if its corpus or settings changed (refresh=True)."""
    build = store.current_build(Path(index_dir))
    if refresh and is_stale(build, settings):
        if on_rebuild:
            on_rebuild(build)
        result = build_index(
            [s["path"] for s in build.manifest["sources"]], Path(index_dir), with_build_dense(settings, build)
        )
        build = result.build
    r = settings.retrieval
    return SparseIndex.load(build.path, get_tokenizer(), r.bigram_weight, r.class_boost), build


def open_retriever(index: SparseIndex, build: store.Build, settings: Settings, mode: str | None = None):
    """The retriever for `mode` (sparse | dense | hybrid | auto): auto is hybrid when the build has a dense index."""
    mode = mode or settings.dense.mode
    has_dense = (build.path / "dense").exists()
    if mode == "auto":
        mode = "hybrid" if has_dense else "sparse"
    if mode == "sparse":
        return index
    if not has_dense:
        raise IndexMissingError(
            f"{build.path}: no dense index; build one with `dnfbot index build --dense-model PATH`"
        )
    from dnfbot.retrieval.dense import open_dense_retriever  # the [dense] extra

    return open_dense_retriever(index, build, settings, mode)
