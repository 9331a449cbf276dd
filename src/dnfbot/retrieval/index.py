"""Build, open and refresh the retrieval index (one place that knows the whole pipeline)."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dnfbot.config import Settings
from dnfbot.corpus import load_chunks
from dnfbot.corpus.chunking import Chunk
from dnfbot.corpus.clean import CLEANING_VERSION
from dnfbot.corpus.document import Document
from dnfbot.errors import IndexDamagedError, IndexMissingError, InputError, OutputError
from dnfbot.retrieval import store
from dnfbot.retrieval.encoders import AUTO, NONE, resolve_backend, resolve_model  # cheap: no torch import
from dnfbot.retrieval.sparse import FieldBuilder, Span, SpansWriter, SparseIndex
from dnfbot.retrieval.tokenizer import (
    TOKENIZER_VERSION,
    WHOLE_MAX_CHARS,
    WINDOW_CHARS,
    KoreanTokenizer,
    char_bigrams,
    get_tokenizer,
)


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
        "tokenize_windows": {"whole_max": WHOLE_MAX_CHARS, "window": WINDOW_CHARS},
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


def _check_finite(params: dict, where: str = "") -> None:
    """Settings made in code skip the YAML checks: a NaN must still never reach a build that goes live."""
    for key, value in params.items():
        name = f"{where}{key}"
        if isinstance(value, dict):
            _check_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"setting {name}: must be a finite number, got {value}")


def build_index(
    corpus: list[str | Path],
    index_dir: Path,
    settings: Settings,
    *,
    force: bool = False,
    tokenizer: KoreanTokenizer | None = None,
    on_wait: Callable[[], None] | None = None,
    unless_live: str | None = None,
    embedding_cache: Path | None = None,
) -> BuildResult:
    """Build (or keep, when the corpus and settings are unchanged and the live build is intact) the index for
    `corpus` in `index_dir`. Builders of one index dir take turns (on_wait: called if this one has to wait);
    one that waited finds the build the other made and keeps it. A build that cannot be written (disk full,
    permissions) is an OutputError, and the previous build stays live. `unless_live`: the name of a build
    known to be unreadable — rebuild if it is still the live one, even though its fingerprint matches.
    Dense vectors are cached in `embedding_cache` (default index_dir/embedding-cache)."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    sources = store.describe_sources(corpus)
    params = index_params(settings)  # dense.model auto → e5-small or nothing, decided here once
    _check_finite(params)
    fp = store.fingerprint(sources, params)
    with store.build_lock(index_dir, on_wait):
        if not force:
            try:
                live = store.current_build(index_dir)
                if live.fingerprint == fp and live.path.name != unless_live:
                    return BuildResult(live, False, time.perf_counter() - t0)
            except IndexMissingError:  # none yet, or damaged: build
                pass
        tok = tokenizer or get_tokenizer()
        chunks, docs, report = load_chunks(corpus, settings.chunk)
        tmp = store.begin_build(index_dir)
        try:
            sparse = _build_sparse(docs, chunks, tok, settings, params["title_boost"], tmp)
            sparse.save(tmp)
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
        except (OSError, OutputError) as e:
            store.abort_build(tmp)
            raise store.write_error(index_dir, e) from None
        except BaseException:
            store.abort_build(tmp)
            raise
    return BuildResult(build, True, time.perf_counter() - t0)


def _build_sparse(
    docs: list[Document], chunks: list[Chunk], tok: KoreanTokenizer, settings: Settings, boost: int, out: Path
) -> SparseIndex:
    """Tokenize every document once (long ones in windows), streaming: each chunk's tokens go into the two
    BM25 builders and its spans to spans.jsonl as soon as its text is tokenized."""
    title_tokens = tok.tokenize_many([d.title for d in docs])
    title_bigrams: dict[int, list[str]] = {}
    morph, bigram = FieldBuilder(), FieldBuilder()
    writer = SpansWriter(out)
    n = 0
    try:
        for di, c, spans in chunk_spans_stream(tok, docs, chunks):
            if di not in title_bigrams:
                title_bigrams.clear()
                title_bigrams[di] = char_bigrams(c.title) * boost
            morph.add(title_tokens[di] * boost + [t for t, _, _ in spans])
            bigram.add(title_bigrams[di] + char_bigrams(c.text))
            writer.write(spans)
            n += 1
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if n != len(chunks):  # every chunk lies inside its document's text: cannot happen
        raise RuntimeError(f"tokenized {n} of {len(chunks)} chunks")
    r = settings.retrieval
    sparse = SparseIndex(
        chunks, morph.build(r.bm25_k1, r.bm25_b), bigram.build(r.bm25_k1, r.bm25_b), tok, r.bigram_weight
    )
    sparse.class_boost = r.class_boost
    return sparse


def chunk_spans_stream(
    tok: KoreanTokenizer, docs: list[Document], chunks: list[Chunk]
) -> Iterator[tuple[int, Chunk, list[Span]]]:
    """(document index, chunk, the chunk's token spans relative to its text) for every chunk, in `chunks`
    order (chunk_documents': by document, then position). The same spans as chunk_spans_from_doc over the
    whole document's tokens, but a chunk is emitted as soon as the windows tokenized so far cover it, and
    tokens before the next chunk are dropped: memory is bounded by a batch of windows, not a document."""
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    cur, pending, k = -1, [], 0
    buf: list[Span] = []
    starts: list[int] = []
    for di, covered, spans in tok.tokenize_spans_windowed(d.text for d in docs):
        if di != cur:
            cur, pending, k, buf, starts = di, by_doc.get(docs[di].doc_id, []), 0, [], []
        buf.extend(spans)
        starts.extend(s for _, s, _ in spans)
        while k < len(pending) and pending[k].end <= covered:
            c = pending[k]
            i, j = bisect.bisect_left(starts, c.start), bisect.bisect_left(starts, c.end)
            yield di, c, [(t, s - c.start, e - c.start) for t, s, e in buf[i:j] if e <= c.end]
            k += 1
        if k < len(pending):
            drop = bisect.bisect_left(starts, pending[k].start)
            del buf[:drop], starts[:drop]


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
    index_dir: Path,
    settings: Settings,
    *,
    refresh: bool = True,
    on_rebuild=None,
    on_repair=None,
    on_keep_stale=None,
) -> tuple[SparseIndex, store.Build]:
    """Load the live index; rebuild it first if its corpus or settings changed (refresh=True).

    A damaged build (incomplete, truncated, unreadable) is rebuilt from the corpus its manifest names when
    that corpus is still there (on_repair(reason) is called first), else refused with IndexDamagedError
    saying how to rebuild. A refresh that cannot be written (read-only index, disk full) raises OutputError,
    or, given on_keep_stale(message), reports it and loads the previous build as it is. The build returned is
    pinned for as long as the index object lives: a concurrent rebuild never removes it from this reader."""
    index_dir = Path(index_dir)
    try:
        build = store.current_build(index_dir)
    except IndexDamagedError as e:
        build = _repair(index_dir, settings, e, on_repair)
    if refresh and is_stale(build, settings):
        if on_rebuild:
            on_rebuild(build)
        try:
            build_index(
                [s["path"] for s in build.manifest["sources"]], index_dir, with_build_dense(settings, build)
            )
        except OutputError as e:
            if on_keep_stale is None:
                raise
            on_keep_stale(str(e))
    try:
        return _load_pinned(index_dir, settings)
    except IndexDamagedError as e:  # its files could not be read after all
        _repair(index_dir, settings, e, on_repair, unless_live=e.build_name)
        return _load_pinned(index_dir, settings)


def _load_pinned(index_dir: Path, settings: Settings) -> tuple[SparseIndex, store.Build]:
    build = store.open_current(index_dir)
    r = settings.retrieval
    try:
        index = SparseIndex.load(build.path, get_tokenizer(), r.bigram_weight, r.class_boost)
    except (OSError, ValueError, KeyError, TypeError, EOFError, InputError) as e:
        build.release()
        raise store.damaged(build, _reason(e, build.path)) from None
    index.pinned_build = build  # keeps the pin (and so the build's files) for the index's lifetime
    return index, build


def _reason(e: Exception, build_path: Path) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.replace(f"{build_path}/", "").replace(str(build_path), build_path.name)


def _repair(
    index_dir: Path, settings: Settings, err: IndexDamagedError, on_repair, unless_live: str | None = None
) -> store.Build:
    """Rebuild a damaged index from its own corpus, or re-raise `err` when that corpus is not known or gone.
    (Not forced: a process that waited for another's repair finds it done.)"""
    if not err.sources or not all(Path(p).exists() for p in err.sources):
        raise err
    if on_repair:
        on_repair(err.reason)
    return build_index(err.sources, index_dir, settings, unless_live=unless_live).build


RETRIEVAL_MODES = ("auto", "sparse", "dense", "hybrid")


def open_retriever(index: SparseIndex, build: store.Build, settings: Settings, mode: str | None = None):
    """The retriever for `mode` (sparse | dense | hybrid | auto): auto is hybrid when the build has a dense index."""
    mode = mode or settings.dense.mode
    if mode not in RETRIEVAL_MODES:  # before the index is looked at: "no dense index" would mislead
        raise InputError(
            f"--mode: unknown retrieval mode {mode!r}; choose one of {', '.join(RETRIEVAL_MODES)}"
        )
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
