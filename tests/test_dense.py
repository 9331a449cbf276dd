"""Dense and hybrid retrieval: fusion arithmetic, index build + embedding cache, filters, CLI — offline, with a
tiny random-init BERT sentence-transformer and the polyglot-ko tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dnfbot.config import ChunkSettings, DenseSettings, Settings
from dnfbot.errors import IndexMissingError
from dnfbot.retrieval.dense import (
    DenseRetriever,
    minmax,
    model_identity,
    ranks,
    rrf_fusion,
    weighted_fusion,
)
from dnfbot.retrieval.sparse import Filters

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box: one thread is many times faster
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory, polyglot_tokenizer_dir) -> Path:
    from dnfbot.train.embed import init_embedder

    out = tmp_path_factory.mktemp("tiny-embedder") / "model"
    init_embedder(polyglot_tokenizer_dir, out, "tiny")
    return out


def _settings(model: Path, **dense) -> Settings:
    s = Settings()
    s.chunk = s.chunk.model_copy(update={"size": 100, "overlap": 0})  # several chunks per mini article
    s.dense = DenseSettings(model=str(model), **dense)
    return s


@pytest.fixture
def dense_index(tmp_path, tiny_embedder):
    from dnfbot.retrieval.index import build_index

    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    settings = _settings(tiny_embedder)
    result = build_index([corpus], tmp_path / "index", settings)
    return corpus, tmp_path / "index", settings, result


# --- fusion arithmetic against hand-computed values -----------------------------------------------------------
def test_minmax_normalises_over_eligible_chunks_only():
    x = np.array([3.0, 1.0, 0.0, 2.0, 9.0])
    eligible = np.array([True, True, True, True, False])
    np.testing.assert_allclose(minmax(x, eligible), [1.0, 1 / 3, 0.0, 2 / 3, 0.0])
    np.testing.assert_allclose(minmax(x, eligible, lo=1.0), [1.0, 0.0, 0.0, 0.5, 0.0])  # floor clips below
    np.testing.assert_allclose(minmax(np.array([0.4, 0.4]), np.array([True, True])), [1.0, 1.0])
    assert not minmax(x, np.zeros(5, dtype=bool)).any()


def test_weighted_fusion_hand_computed():
    sparse = np.array([3.0, 1.0, 0.0, 2.0])
    dense = np.array([0.2, 0.9, 0.5, 0.1])
    everyone = np.ones(4, dtype=bool)
    # mm(sparse) = [1, 1/3, 0, 2/3]; mm(dense) = [0.125, 1, 0.5, 0]
    fused = weighted_fusion(sparse, dense, everyone, 0.3, 0.7)
    np.testing.assert_allclose(fused, [0.3875, 0.8, 0.35, 0.2])
    # threshold 0.3 is the dense zero point: mm = [0, 1, 1/3, 0]
    fused = weighted_fusion(sparse, dense, everyone, 0.3, 0.7, min_similarity=0.3)
    np.testing.assert_allclose(fused, [0.3, 0.1 + 0.7, 0.7 / 3, 0.2])


def test_rrf_fusion_hand_computed():
    sparse = np.array([3.0, 1.0, 0.0, 2.0])  # ranks 1, 3, -, 2 (a zero BM25 score is not in the list)
    dense = np.array([0.2, 0.9, 0.5, 0.1])  # ranks 3, 1, 2, 4
    everyone = np.ones(4, dtype=bool)
    np.testing.assert_array_equal(ranks(sparse, sparse > 0), [1, 3, 0, 2])
    fused = rrf_fusion(sparse, dense, everyone, 0.3, 0.7, k=60)
    expect = [0.3 / 61 + 0.7 / 63, 0.3 / 63 + 0.7 / 61, 0.7 / 62, 0.3 / 62 + 0.7 / 64]
    np.testing.assert_allclose(fused, expect)
    # filtered-out chunks get nothing and do not take a rank
    mask = np.array([False, True, True, True])
    fused = rrf_fusion(sparse, dense, mask, 1.0, 1.0, k=60, min_similarity=0.3)
    np.testing.assert_allclose(fused, [0.0, 1 / 62 + 1 / 61, 1 / 62, 1 / 61])


# --- model identity and the embedding cache ----------------------------------------------------------------------
def test_model_identity_follows_weights_not_model_card(tmp_path, tiny_embedder):
    model = tmp_path / "m"
    shutil.copytree(tiny_embedder, model)
    before = model_identity(str(model))
    assert model_identity(str(model)) == before
    (model / "README.md").write_text("a new model card", encoding="utf-8")
    assert model_identity(str(model)) == before
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    assert model_identity(str(model)) != before
    assert model_identity("BAAI/bge-m3") != model_identity("BAAI/bge-m3-other")


def test_dense_build_writes_faiss_index_and_reuses_cache(dense_index, tiny_embedder):
    import faiss

    from dnfbot.retrieval.index import build_index

    corpus, index_dir, settings, first = dense_index
    info = first.build.manifest["dense"]
    n = first.build.manifest["chunks"]
    assert n >= 6
    assert info["count"] == n and info["dim"] == 64 and info["cache_hits"] == 0 and info["encoded"] == n
    folder = first.build.path / "dense"
    index = faiss.read_index(str(folder / "index.faiss"))
    assert index.ntotal == n and isinstance(index, faiss.IndexFlatIP)
    vecs = index.reconstruct_n(0, n)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)  # normalised: IP = cosine
    assert len(json.loads((folder / "ids.json").read_text())) == n

    again = build_index([corpus], index_dir, settings, force=True).build.manifest["dense"]
    assert again["encoded"] == 0 and again["cache_hits"] == n
    np.testing.assert_array_equal(
        faiss.read_index(
            str(
                index_dir
                / next(p.name for p in index_dir.iterdir() if p.name.startswith("build-"))
                / "dense"
                / "index.faiss"
            )
        ).reconstruct_n(0, n),
        vecs,
    )

    # change one article: only its chunks are encoded again
    text = corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수")
    corpus.write_text(text, encoding="utf-8")
    changed = build_index([corpus], index_dir, settings).build.manifest["dense"]
    assert 1 <= changed["encoded"] < n // 2
    assert changed["cache_hits"] == changed["count"] - changed["encoded"]


# --- searching -----------------------------------------------------------------------------------------------
def test_hybrid_and_dense_search_with_filters(dense_index):
    from dnfbot.retrieval.index import open_index, open_retriever

    _, index_dir, settings, _ = dense_index
    idx, build = open_index(index_dir, settings)
    hybrid = open_retriever(idx, build, settings)  # auto = hybrid when the build has a dense index
    assert isinstance(hybrid, DenseRetriever) and hybrid.mode == "hybrid"
    hits = hybrid.search("무의 장막 신수 추천", 5)
    assert hits and hits[0].chunk.doc_id == "0"  # BM25 agrees, dense can't outvote a clear lexical match here
    assert len({h.chunk.doc_id for h in hits}) == len(hits)  # one chunk per article
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert set(hybrid.last_timing) == {"encode_ms", "fusion_ms"}

    only = Filters(category3="커스텀")
    filtered = hybrid.search("세팅", 5, only)
    assert filtered and all(h.chunk.category3 == "커스텀" for h in filtered)

    dense = open_retriever(idx, build, settings, "dense")
    dhits = dense.search("소울브링어 출혈 세팅", 10)
    assert dhits and all(-1.0 <= h.score <= 1.0 + 1e-6 for h in dhits)
    assert all(h.chunk.category3 == "커스텀" for h in dense.search("세팅", 10, only))
    # the dense score of a hit is its cosine with the query
    q = dense.encode_query("소울브링어 출혈 세팅")
    top = dhits[0]
    assert top.score == pytest.approx(float(dense.matrix[idx.position[top.chunk.chunk_id]] @ q), abs=1e-5)


def test_min_similarity_drops_weak_dense_hits(dense_index):
    from dnfbot.retrieval.index import open_index, open_retriever

    _, index_dir, settings, _ = dense_index
    idx, build = open_index(index_dir, settings)
    dense = open_retriever(idx, build, settings, "dense")
    cos = sorted((h.score for h in dense.search("소울브링어", 20, per_doc=False)), reverse=True)
    assert len(cos) >= 3
    cut = (cos[0] + cos[-1]) / 2
    strict = settings.model_copy(deep=True)
    strict.dense = strict.dense.model_copy(update={"min_similarity": cut})
    kept = open_retriever(idx, build, strict, "dense").search("소울브링어", 20, per_doc=False)
    assert kept and all(h.score >= cut for h in kept) and len(kept) < len(cos)


def test_rrf_mode_and_rag_answer_with_hybrid(dense_index):
    from dnfbot.rag import RAG
    from dnfbot.retrieval.index import open_index, open_retriever

    _, index_dir, settings, _ = dense_index
    settings.dense = settings.dense.model_copy(update={"fusion": "rrf"})
    idx, build = open_index(index_dir, settings)
    rrf = open_retriever(idx, build, settings, "hybrid")
    hits = rrf.search("어둑섬 입장 조건", 3)
    assert hits[0].chunk.doc_id == "1"
    assert hits[0].score <= (0.3 + 0.7) / 61 + 1e-12  # an RRF score: at best rank 1 in both lists
    answer = RAG(idx, settings, retriever=rrf).ask("어둑섬 입장 조건 명성은?")
    assert answer.answered and any(s["doc_id"] == "1" for s in answer.sources)


def test_changed_model_after_build_is_an_error(dense_index, tmp_path):
    from dnfbot.retrieval.index import build_index, open_index, open_retriever

    corpus, _, settings, _ = dense_index
    model = tmp_path / "copy"
    shutil.copytree(settings.dense.model, model)
    s = _settings(model)
    build_index([corpus], tmp_path / "index2", s)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    idx, build = open_index(tmp_path / "index2", s, refresh=False)
    with pytest.raises(IndexMissingError, match="changed since the dense index was built"):
        open_retriever(idx, build, s, "hybrid")


def _cli_lines(args: list[str]) -> list[dict]:
    from typer.testing import CliRunner

    from dnfbot.cli import app

    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]


def _config(tmp_path: Path, model: str | None) -> Path:
    config = tmp_path / "config.yaml"
    dense = f"dense: {{model: '{model}'}}\n" if model else ""
    config.write_text("chunk: {size: 100, overlap: 0}\n" + dense, encoding="utf-8")
    return config


def test_search_cli_hybrid_json(dense_index, tmp_path):
    _, index_dir, settings, _ = dense_index
    where = ["--index-dir", str(index_dir), "--config", str(_config(tmp_path, settings.dense.model))]
    (out,) = _cli_lines(["search", "무의 장막 신수", "--mode", "hybrid", *where])
    assert out["results"][0]["doc_id"] == "0"
    assert (out["mode"], out["reranked"]) == ("hybrid", True)
    # the re-ranked score: fused (≤ 1, not a BM25 one) / the best fused + weight · coverage
    assert out["results"][0]["score"] <= 1.0 + settings.retrieval.rerank_weight
    (out,) = _cli_lines(["search", "세팅", "--mode", "dense", "--category3", "커스텀", *where])
    assert {x["doc_id"] for x in out["results"]} == {"3"}


def test_ask_batch_and_eval_cli_with_hybrid(dense_index, tmp_path):
    """The RAG path end to end with hybrid retrieval: batch `ask` (answer + refusal) and `eval retrieval`."""
    _, index_dir, settings, _ = dense_index
    where = ["--index-dir", str(index_dir), "--config", str(_config(tmp_path, settings.dense.model))]
    questions = tmp_path / "questions.jsonl"
    dev = [
        {"question": "어둑섬 입장 조건 명성은?", "gold_doc_ids": ["1"], "answer": "40000"},
        {"question": "더스크 피로도 몇 소모해?", "gold_doc_ids": ["2"], "answer": "30"},
        {"question": "오늘 서울 날씨 알려줘", "answerable": False},
    ]
    questions.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dev), encoding="utf-8")
    answers = _cli_lines(["ask", "--queries", str(questions), "--mode", "hybrid", *where])
    assert [a["question"] for a in answers] == [d["question"] for d in dev]
    assert answers[0]["answered"] and "40000" in answers[0]["answer"]
    assert answers[0]["sources"][0]["doc_id"] == "1"
    assert answers[1]["answered"] and answers[1]["sources"][0]["doc_id"] == "2"
    assert not answers[2]["answered"] and answers[2]["sources"] == []  # dense always finds *something*
    (report,) = _cli_lines(
        ["eval", "retrieval", "--queries", str(questions), "--mode", "hybrid", "--k", "3", *where]
    )
    assert report["recall@3"] == 1.0 and report["refusal_accuracy"] == 1.0


def test_dense_model_given_once_on_the_command_line_is_kept(tmp_path, tiny_embedder):
    """`index build --dense-model PATH` with settings that name no model: later verbs use the dense part
    instead of treating the missing model as a settings change and rebuilding sparse-only."""
    import dnfbot.retrieval.index as index_module

    if not hasattr(index_module, "with_build_dense"):
        pytest.skip("needs retrieval.index.with_build_dense (the lead's change requested in issue 6)")
    corpus = tmp_path / "guide.json"
    shutil.copy(MINI, corpus)
    where = ["--index-dir", str(tmp_path / "index"), "--config", str(_config(tmp_path, None))]
    (built,) = _cli_lines(
        ["index", "build", "--corpus", str(corpus), "--dense-model", str(tiny_embedder), *where]
    )
    (out,) = _cli_lines(
        ["search", "무의 장막 신수", *where]
    )  # auto: hybrid, since the build has a dense index
    assert out["results"][0]["doc_id"] == "0" and out["mode"] == "hybrid"
    (status,) = _cli_lines(["index", "status", *where])
    assert status["build"] == built["build"] and status["dense"] and status["stale"] is False
    # a changed corpus is rebuilt with the same dense model
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수"), encoding="utf-8")
    (out,) = _cli_lines(["search", "머랭 신수", *where])
    (status,) = _cli_lines(["index", "status", *where])
    assert status["build"] != built["build"] and status["dense"] and out["results"][0]["doc_id"] == "0"


def test_bge_m3_config_and_missing_model_error(tmp_path):
    from dnfbot.config import load_settings
    from dnfbot.errors import InputError
    from dnfbot.retrieval.index import build_index

    s = load_settings(Path(__file__).parents[1] / "configs" / "bge-m3.yaml")
    assert s.dense.model and (s.dense.fusion, s.dense.sparse_weight, s.dense.dense_weight) == (
        "weighted",
        0.3,
        0.7,
    )
    s.dense = s.dense.model_copy(update={"model": str(tmp_path / "no-such-model")})
    with pytest.raises(
        InputError, match="no-such-model: cannot load the embedding model .*nothing is downloaded"
    ):
        build_index([MINI], tmp_path / "index", s)
    assert not (tmp_path / "index" / "CURRENT").exists()  # a failed build leaves nothing live


def test_bench_picks_fusion_weights_on_the_other_half():
    from dnfbot.bench.dense import cross_validated

    folds = np.array([0, 0, 1, 1])
    rows = [  # ranks of the gold article per question (0 = not in the top k)
        {"setup": "hybrid weighted 0.3/0.7", "ranks": [1, 1, 0, 0]},  # best on fold 0 only
        {"setup": "hybrid weighted 0.8/0.2", "ranks": [2, 0, 1, 1]},  # best on fold 1 only
    ]
    cv = cross_validated(rows, folds)
    # fold 0 is scored with the row chosen on fold 1 (0.8/0.2) and vice versa: ranks [2, 0, 0, 0]
    assert cv["chosen"] == ["hybrid weighted 0.8/0.2", "hybrid weighted 0.3/0.7"]
    assert cv["recall"] == 0.25 and cv["mrr"] == pytest.approx(0.5 / 4)


# --- encoders, calibration, the evidence signal, the static fallback ------------------------------------------
def test_direct_torch_path_gives_sentence_transformers_vectors(tiny_embedder):
    from dnfbot.retrieval.dense import encode, load_model
    from dnfbot.retrieval.encoders import TorchEncoder, open_encoder

    enc = open_encoder(str(tiny_embedder))
    assert isinstance(enc, TorchEncoder) and enc.direct is not None  # no sentence-transformers at run time
    assert enc.fast is not None  # and on the CPU, the lean BERT forward (fast_bert)
    texts = ["무의 장막 신수", "어둑섬 입장 조건은 명성 40000입니다. " * 40, "x"]
    np.testing.assert_allclose(enc.encode(texts), encode(load_model(str(tiny_embedder)), texts), atol=1e-5)
    assert enc.token_counts(texts)[1] == enc.max_seq_length  # cut like sentence-transformers cuts


def test_lean_forward_matches_transformers_and_steps_aside_where_it_would_not(tiny_embedder, monkeypatch):
    import torch

    from dnfbot.retrieval import fast_bert
    from dnfbot.retrieval.encoders import TorchEncoder

    fast = TorchEncoder(str(tiny_embedder), ("query: ", "passage: "))
    ref = TorchEncoder(str(tiny_embedder), ("query: ", "passage: "), fast=False)
    assert fast.fast is not None and ref.fast is None
    texts = [
        "무의 장막 신수",
        "어둑섬 입장 조건은 명성 40000입니다. " * 60,
        "x",
        "안개신 레이드 보상 정리 " * 3,
    ]
    for kind, batch in (("query", 1), ("query", 4), ("passage", 2)):
        cos = (fast.encode(texts, kind, batch) * ref.encode(texts, kind, batch)).sum(1)
        assert cos.min() >= 0.99999, (kind, batch, float(cos.min()))
    # token type ids, as BERT tokenizers return them, are used like BertModel uses them
    lean, m = fast_bert.FastBert(fast.model), fast.model
    ids = torch.tensor([[2, 10, 11, 12, 3, 0]])
    mask, types = torch.tensor([[1, 1, 1, 1, 1, 0]]), torch.tensor([[0, 0, 0, 1, 1, 0]])
    with torch.inference_mode():
        want = m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, :5]
        torch.testing.assert_close(lean(ids, mask, types)[:, :5], want, atol=1e-4, rtol=1e-3)
    # a model it does not reproduce (tanh GELU) keeps transformers' forward
    m.config.hidden_act = "gelu_new"
    assert not fast_bert.supports(m, torch.device("cpu"))
    m.config.hidden_act = "gelu"
    # a forward that disagrees with transformers on the load check is not used
    monkeypatch.setattr(
        fast_bert.FastBert,
        "__call__",
        lambda self, input_ids, attention_mask, **kw: torch.zeros(*input_ids.shape, fast.dim),
    )
    assert TorchEncoder(str(tiny_embedder), ("", "")).fast is None


def test_calibrated_weights_are_stored_with_the_index_and_used(dense_index, tmp_path):
    from dnfbot.eval.retrieval import DevItem
    from dnfbot.retrieval.dense import calibrate_and_store
    from dnfbot.retrieval.fusion import FUSION_FILE
    from dnfbot.retrieval.index import build_index, open_index, open_retriever

    corpus, index_dir, settings, _ = dense_index
    idx, build = open_index(index_dir, settings)
    before = open_retriever(idx, build, settings)
    default = DenseSettings().sparse_weight
    assert before.fusion_source == "settings" and before.settings.sparse_weight == default
    items = [
        DevItem("a", "무의 장막 신수", ["0"], None, True),
        DevItem("b", "어둑섬 입장 조건", ["1"], None, True),
        DevItem("c", "더스크 피로도", ["2"], None, True),
        DevItem("d", "소울브링어 출혈", ["4"], None, True),
        DevItem("e", "오늘 날씨", [], None, False),
    ]
    tuned, report = calibrate_and_store(before, items, k=3)
    assert report["questions"] == 4 and len(report["rows"]) == 16
    # BM25's ranking (sparse weight 1.0) is a candidate: the stored choice is never below it on the dev set
    assert (report["chosen_on_dev"]["recall"], report["chosen_on_dev"]["mrr"]) >= (
        report["sparse"]["recall"],
        report["sparse"]["mrr"] - 1e-9,
    )
    stored = json.loads((index_dir / FUSION_FILE).read_text())[before.encoder.identity]["settings"]
    assert stored == report["chosen"] and tuned.fusion_source == "calibrated"
    again = open_retriever(idx, build, settings)
    assert again.fusion_source == "calibrated"
    assert (again.settings.fusion, again.settings.sparse_weight) == (
        stored["fusion"],
        stored["sparse_weight"],
    )
    off = settings.model_copy(deep=True)
    off.dense = off.dense.model_copy(update={"calibrated": False})
    assert (
        open_retriever(idx, build, off).settings.sparse_weight == default
    )  # the settings' weights on request
    # a rebuild for a corpus edit keeps them (same model)
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("로그 신수", "머랭 신수"), encoding="utf-8")
    build_index([corpus], index_dir, settings)
    idx2, build2 = open_index(index_dir, settings)
    assert open_retriever(idx2, build2, settings).fusion_source == "calibrated"


def test_eval_retrieval_calibrate_cli_reports_the_fusion(dense_index, tmp_path):
    _, index_dir, settings, _ = dense_index
    dev = tmp_path / "dev.jsonl"
    rows = [
        {"id": "1", "question": "어둑섬 입장 조건 명성은?", "gold_doc_ids": ["1"], "answer": "40000"},
        {"id": "2", "question": "더스크 피로도 몇 소모해?", "gold_doc_ids": ["2"], "answer": "30"},
        {"id": "3", "question": "오늘 서울 날씨 알려줘", "answerable": False},
    ]
    dev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    where = ["--index-dir", str(index_dir), "--config", str(_config(tmp_path, settings.dense.model))]
    (report,) = _cli_lines(
        ["eval", "retrieval", "--queries", str(dev), "--mode", "hybrid", "--calibrate", *where]
    )
    f = report["fusion_calibration"]
    assert f["chosen"]["fusion"] in ("weighted", "rrf") and "held_out" in f and f["stored"]["questions"] == 2
    assert (index_dir / "fusion.json").exists()


def test_max_cosine_is_the_best_query_passage_cosine(dense_index):
    from dnfbot.retrieval.index import open_index, open_retriever

    _, index_dir, settings, _ = dense_index
    idx, build = open_index(index_dir, settings)
    r = open_retriever(idx, build, settings, "hybrid")
    hits = r.search("어둑섬 입장 조건", 3)
    q = r.encode_query("어둑섬 입장 조건")
    want = max(float(r.matrix[idx.position[h.chunk.chunk_id]] @ q) for h in hits)
    assert r.max_cosine("어둑섬 입장 조건", hits) == pytest.approx(want, abs=1e-6)
    assert r.max_cosine("어둑섬 입장 조건", []) == 0.0


def test_dense_gate_scores_and_auc():
    from dnfbot.retrieval import dense_gate as g

    assert g.auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert g.auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    with pytest.raises(ValueError):
        g.auc([0.1], [True])
    cov = np.array([0.6, 0.55, 0.55, 0.4])
    cos = np.array([0.85, 0.86, 0.70, 0.80])
    y = [True, True, False, False]
    assert g.combined_score(0.5, 0.9, weight=0.0) == 0.5  # weight 0 = coverage alone
    assert g.combined_score(0.5, 0.0, weight=1.0, center=0.8) < 0.5  # no hits never helps
    fit = g.fit_weight(cov, cos, y)
    assert (
        fit["auc_coverage"] < 1.0 and fit["auc"] == 1.0 and fit["weight"] > 0
    )  # the dense term breaks the tie
    assert g.max_cosine(np.array([1.0, 0.0]), np.array([[0.6, 0.8], [0.0, 1.0]])) == pytest.approx(0.6)
    assert g.max_cosine(np.array([1.0, 0.0]), np.zeros((0, 2))) == 0.0


def test_cached_encode_reuses_the_index_builds_vectors(dense_index, tmp_path, monkeypatch):
    from dnfbot.retrieval.dense import cached_encode, passage_text
    from dnfbot.retrieval.index import open_index, open_retriever

    _, index_dir, settings, _ = dense_index
    idx, build = open_index(index_dir, settings)
    enc = open_retriever(idx, build, settings, "dense").encoder
    texts = [passage_text(c) for c in idx.chunks[:3]]
    cache = index_dir / "embedding-cache"  # where the build put them
    want = enc.encode(texts, "passage")
    monkeypatch.setattr(enc, "encode", lambda *a, **k: pytest.fail("encoded again"))
    np.testing.assert_allclose(cached_encode(enc, texts, "passage", cache), want, atol=1e-6)
    monkeypatch.undo()
    q = cached_encode(enc, ["새 질문"], "query", tmp_path / "c")  # new text: encoded once, then kept
    monkeypatch.setattr(enc, "encode", lambda *a, **k: pytest.fail("encoded again"))
    np.testing.assert_allclose(cached_encode(enc, ["새 질문"], "query", tmp_path / "c"), q)


def test_static_embedder_trains_and_serves_without_a_pretrained_model(tmp_path):
    from dnfbot.datasets.pairs import build_pairs
    from dnfbot.retrieval.index import build_index, open_index, open_retriever
    from dnfbot.retrieval.static_embed import StaticEncoder, train_static

    pairs = tmp_path / "pairs.jsonl"
    build_pairs([MINI], pairs, ict_per_chunk=3, valid_fraction=0.0, chunk=ChunkSettings(size=100, overlap=0))
    r = train_static(pairs, tmp_path / "static", dim=32, epochs=30, batch_size=8, min_count=1, seed=0)
    assert r["steps"] > 0 and r["last_loss"] < r["first_loss"]
    enc = StaticEncoder(str(tmp_path / "static"))
    v = enc.encode(["무의 장막 신수", "ㅋ"])  # an unknown-only text is the zero vector, not NaN
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5) and not np.isnan(v).any()
    s = _settings(tmp_path / "static")
    built = build_index([MINI], tmp_path / "index", s).build.manifest["dense"]
    assert built["backend"] == "static" and built["dim"] == 32
    idx, build = open_index(tmp_path / "index", s, refresh=False)
    hits = open_retriever(idx, build, s, "hybrid").search("무의 장막 신수", 3)
    assert hits and hits[0].chunk.doc_id == "0"
