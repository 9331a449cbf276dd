"""Embedder fine-tuning: pairs dataset, BM25 hard negatives, training with multiple-negatives ranking loss, and
the before/after analysis — offline, with a tiny random-init BERT sentence-transformer and the polyglot-ko
tokenizer. The main test checks that fine-tuning really improves retrieval of held-out questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dnfbot.config import ChunkSettings
from dnfbot.datasets.pairs import assign_split, build_pairs
from dnfbot.errors import InputError
from dnfbot.train.embed import load_pairs

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box: one thread is many times faster
    yield
    torch.set_num_threads(n)


def _cli_lines(args: list[str]) -> list[dict]:
    from typer.testing import CliRunner

    from dnfbot.cli import app

    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.strip().splitlines()]


def _cli(args: list[str]) -> dict:
    lines = _cli_lines(args)
    assert len(lines) == 1, lines  # --json: exactly one JSON object on stdout
    return lines[0]


# --- pairs ----------------------------------------------------------------------------------------------------
def test_ict_pairs_are_stable_and_split_by_question_or_doc(tmp_path):
    out = tmp_path / "pairs.jsonl"
    r = build_pairs([MINI], out, ict_per_chunk=2, valid_fraction=0.5, split_by="question")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert r["pairs"] == len(rows) >= 8 and r["train"] + r["valid"] == len(rows)
    assert r["chunks_covered"] == r["chunks"]  # every mini chunk has at least one usable sentence
    for p in rows:
        assert set(p) == {"query", "passage", "chunk_id", "doc_id", "split", "source"}
        title, body = p["passage"].split("\n", 1)  # passages are what the dense index embeds: title + text
        assert title and p["query"] in body and p["source"] == "ict"
        assert p["split"] == assign_split(p["query"], 0.5)
    assert len({(p["query"], p["chunk_id"]) for p in rows}) == len(rows)
    first = out.read_bytes()
    build_pairs([MINI], out, ict_per_chunk=2, valid_fraction=0.5, split_by="question")
    assert out.read_bytes() == first  # deterministic: same pairs, same split, on any machine

    assert build_pairs([MINI], out, ict_per_chunk=2, valid_fraction=0.5)["split_by"] == "doc"  # the default
    by_doc: dict[str, set[str]] = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        by_doc.setdefault(p["doc_id"], set()).add(p["split"])
    assert all(len(s) == 1 for s in by_doc.values())  # held-out articles are never seen in training
    assert {s for v in by_doc.values() for s in v} == {"train", "valid"}


def test_eval_holds_out_only_articles_never_trained_on(tmp_path):
    from dnfbot.eval.embedder import load_eval_pairs

    out = tmp_path / "pairs.jsonl"
    build_pairs([MINI], out, ict_per_chunk=2, valid_fraction=0.5, split_by="question")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    trained = {p["doc_id"] for p in rows if p["split"] == "train"}
    queries, ids, passages = load_eval_pairs(out)
    assert queries and all(q["split"] == "valid" and q["doc_id"] not in trained for q in queries)
    shared = [p for p in rows if p["split"] == "valid" and p["doc_id"] in trained]
    assert shared and len(queries) == sum(p["split"] == "valid" for p in rows) - len(shared)
    assert len(ids) == len(set(ids)) == len({p["chunk_id"] for p in rows}) == len(passages)  # the whole pool
    # a file where every valid pair's article is also trained on holds nothing out: one clear error
    leaky = [{**p, "split": "train"} for p in rows] + [{**rows[0], "query": "다른 질문", "split": "valid"}]
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in leaky), encoding="utf-8")
    with pytest.raises(InputError, match="--split-by doc"):
        load_eval_pairs(out)
    # by article (the default), every valid pair is held out
    build_pairs([MINI], out, ict_per_chunk=2, valid_fraction=0.5)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(load_eval_pairs(out)[0]) == sum(p["split"] == "valid" for p in rows) > 0


def test_synth_pairs_use_the_chunk_the_question_was_written_from(tmp_path):
    synth = tmp_path / "qa.jsonl"
    recs = [
        {"id": "a", "chunk_id": "1#1", "doc_id": "1", "question": "어둑섬   입장 명성은?", "answer": "40000"},
        {"id": "b", "chunk_id": "99#1", "doc_id": "99", "question": "없는 글 질문", "answer": "-"},
        {
            "id": "c",
            "chunk_id": "4#1",
            "doc_id": "4",
            "question": "소울브링어 주력 스킬은?",
            "answer": "사야",
        },
    ]
    synth.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    r = build_pairs([MINI], out, synth=[synth], valid_fraction=0.0)
    assert (r["pairs"], r["synth_records"], r["synth_missing_chunk"]) == (2, 3, 1)
    rows = load_pairs(out)
    assert rows[0]["query"] == "어둑섬 입장 명성은?"  # whitespace normalised
    assert rows[0]["passage"].startswith("어둑섬 레기온 기초\n") and "40000" in rows[0]["passage"]
    assert {p["source"] for p in rows} == {"synth"} and {p["split"] for p in rows} == {"train"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chunk_id": "1#1", "question": "ok?"}\n{"chunk_id": "1#1"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:2: .*'question'"):
        build_pairs([MINI], out, synth=[bad])
    with pytest.raises(InputError, match="--synth FILE"):
        build_pairs([MINI], out)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "q", "passage": "p", "chunk_id": "1#1"}\n{"query": "q2", "passage": ""}\n')
    with pytest.raises(InputError, match=r"broken.jsonl:2: .*'passage'"):
        load_pairs(broken)


# --- models ---------------------------------------------------------------------------------------------------
def test_init_embedder_rejects_bad_input(tmp_path, polyglot_tokenizer_dir):
    from dnfbot.train.embed import init_embedder

    with pytest.raises(InputError, match="--size huge"):
        init_embedder(polyglot_tokenizer_dir, tmp_path / "m", "huge")
    with pytest.raises(InputError, match="not a tokenizer folder"):
        init_embedder(tmp_path, tmp_path / "m", "tiny")


def test_hard_negatives_come_from_other_articles_and_train(tmp_path, polyglot_tokenizer_dir):
    from dnfbot.config import Settings
    from dnfbot.retrieval.index import build_index, open_index
    from dnfbot.train.embed import EmbedTrainConfig, init_embedder, mine_bm25_negatives, train_embedder

    settings = Settings()
    build_index([MINI], tmp_path / "index", settings)
    idx, _ = open_index(tmp_path / "index", settings, refresh=False)
    pairs_path = tmp_path / "pairs.jsonl"
    build_pairs([MINI], pairs_path, ict_per_chunk=1, valid_fraction=0.0)
    pairs = load_pairs(pairs_path)
    negs = mine_bm25_negatives(pairs, idx)
    by_title = {c.title: c.doc_id for c in idx.chunks}
    mined = [(p, n) for p, n in zip(pairs, negs, strict=True) if n is not None]
    assert len(mined) >= len(pairs) // 2
    for p, n in mined:  # a negative is a real passage of another article, never the pair's own
        assert n != p["passage"] and by_title[n.split("\n", 1)[0]] != p["doc_id"]

    base = tmp_path / "base"
    init_embedder(polyglot_tokenizer_dir, base, "tiny")
    cfg = EmbedTrainConfig(
        model=str(base),
        pairs=str(pairs_path),
        out=str(tmp_path / "run"),
        epochs=1,
        batch_size=2,
        lr=5e-3,
        max_seq_length=64,
        hard_negatives=True,
    )
    r = train_embedder(cfg, index=idx)
    assert r["hard_negatives_mined"] == len(mined) == r["train_pairs"]
    # a batch never holds one text twice (a negative that is another pair's positive would be a false one)
    assert 1 <= r["steps"] <= len(mined) // 2 and (tmp_path / "run" / "epoch-1" / "modules.json").exists()
    with pytest.raises(InputError, match="lower --batch-size"):  # 6 passages can't fill a batch of 6 triplets
        train_embedder(
            EmbedTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "r6"), "batch_size": 6}), idx
        )
    with pytest.raises(InputError, match="hard negatives need the BM25 index"):
        train_embedder(EmbedTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "run2")}))


@pytest.mark.slow
def test_fine_tuning_improves_heldout_retrieval_end_to_end(
    tmp_path, guide_corpus_path, polyglot_tokenizer_dir
):
    """data pairs → train embedder → eval embedder → index build --dense-model → search --mode dense, via the
    CLI. On held-out articles' questions, the fine-tuned model must beat its random init clearly (Recall@5,
    MRR@10)."""
    full = json.loads(guide_corpus_path.read_text(encoding="utf-8"))
    keep = list(full["title"])[:80]  # 80 articles: enough pairs to learn from, quick on a 2-core CPU
    corpus = tmp_path / "guide80.json"
    corpus.write_text(
        json.dumps({col: {k: v[k] for k in keep if k in v} for col, v in full.items()}, ensure_ascii=False),
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text("chunk: {size: 600, overlap: 0}\n", encoding="utf-8")
    base, run, pairs = tmp_path / "base", tmp_path / "run", tmp_path / "pairs.jsonl"

    init = _cli(["model", "init-embedder", "--tokenizer", str(polyglot_tokenizer_dir), "--out", str(base)])
    assert init["dim"] == 64 and init["arch"] == "bert"
    p = _cli(
        [
            "data",
            "pairs",
            "--out",
            str(pairs),
            "--ict",
            "2",
            "--valid-fraction",
            "0.2",
            "--corpus",
            str(corpus),
        ]
        + ["--config", str(config)]
    )
    assert p["split_by"] == "doc" and p["valid"] >= 50 and p["train"] >= 600  # held-out articles

    t = _cli(
        [
            "train",
            "embedder",
            "--model",
            str(base),
            "--pairs",
            str(pairs),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--lr",
            "5e-3",
            "--max-seq-length",
            "64",
            "--config",
            str(config),
        ]
    )
    assert t["train_pairs"] == p["train"] and t["steps"] == 2 * (p["train"] // 32)
    losses = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
    assert all((run / f"epoch-{e}" / "model.safetensors").exists() for e in (1, 2))

    e = _cli(
        [
            "eval",
            "embedder",
            "--pairs",
            str(pairs),
            "--run",
            str(run),
            "--out",
            str(tmp_path / "eval"),
            "--max-seq-length",
            "64",
        ]
    )
    assert [c["label"] for c in e["checkpoints"]] == ["base", "epoch 1", "epoch 2"]
    before, after = e["before"], e["after"]
    assert e["queries"] == p["valid"]
    # articles never trained on (measured: Recall@1 0.13 -> 0.19, MRR@10 0.16 -> 0.21, Recall@5 0.19 -> 0.23;
    # the question split this test used before let held-out passages into training: 0.24 -> 0.31 at Recall@5)
    assert after["recall@1"] >= before["recall@1"] + 0.03, (before, after)
    assert after["mrr@10"] >= before["mrr@10"] + 0.03, (before, after)
    assert after["recall@5"] >= before["recall@5"], (before, after)
    assert after["gap"] > before["gap"] + 0.1  # own passage vs others: the original's separation plot
    for png in ("embedder_similarity_hist.png", "embedder_checkpoints.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == PNG_MAGIC

    # the fine-tuned folder is a model `index build --dense-model` takes as is
    index_dir = tmp_path / "index"
    b = _cli(
        [
            "index",
            "build",
            "--corpus",
            str(corpus),
            "--dense-model",
            str(run),
            "--index-dir",
            str(index_dir),
            "--config",
            str(config),
        ]
    )
    manifest = json.loads((index_dir / b["build"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dense"]["count"] == b["chunks"] and manifest["dense"]["dim"] == 64
    dense_cfg = tmp_path / "dense.yaml"
    shutil.copy(config, dense_cfg)
    with open(dense_cfg, "a", encoding="utf-8") as f:
        f.write(f"dense: {{model: '{run}'}}\n")
    train = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()][:20]
    batch = tmp_path / "questions.jsonl"
    batch.write_text("".join(json.dumps({"question": q["query"]}, ensure_ascii=False) + "\n" for q in train))
    lines = _cli_lines(
        [
            "search",
            "--queries",
            str(batch),
            "--mode",
            "dense",
            "--k",
            "5",
            "--index-dir",
            str(index_dir),
            "--config",
            str(dense_cfg),
        ]
    )
    assert [x["question"] for x in lines] == [q["query"] for q in train]
    found = [q["doc_id"] in {h["doc_id"] for h in x["results"]} for q, x in zip(train, lines, strict=True)]
    assert sum(found) >= 10, found  # training questions: their article is in the dense top 5


def test_cpu_sized_fine_tuning_freezes_layers_and_stops_at_max_steps(tmp_path, polyglot_tokenizer_dir):
    """The knobs that make e5 fine-tuning affordable on a CPU: frozen embeddings + lower layers, a bounded
    number of steps, gradient checkpointing; the saved model keeps the inference length, not the training cut."""
    import json as _json

    from dnfbot.train.embed import EmbedTrainConfig, init_embedder, train_embedder

    base = tmp_path / "base"
    init_embedder(polyglot_tokenizer_dir, base, "small")  # 6 layers
    pairs = tmp_path / "pairs.jsonl"
    build_pairs([MINI], pairs, ict_per_chunk=2, valid_fraction=0.0, chunk=ChunkSettings(size=100, overlap=0))
    cfg = EmbedTrainConfig(
        model=str(base),
        pairs=str(pairs),
        out=str(tmp_path / "run"),
        epochs=5,
        batch_size=4,
        lr=1e-3,
        max_seq_length=32,
        freeze_layers=4,
        gradient_checkpointing=True,
        max_steps=2,
    )
    r = train_embedder(cfg)
    assert r["steps"] == 2 and r["checkpoints"] == []  # stopped inside epoch 1: only the final model
    assert r["trainable_parameters"] < r["total_parameters"] / 4  # embeddings + 4 of 6 layers frozen
    from dnfbot.retrieval.dense import load_model

    before, after = load_model(str(base)), load_model(str(tmp_path / "run"))
    assert after.max_seq_length == before.max_seq_length == 256
    sd_b, sd_a = before[0].auto_model.state_dict(), after[0].auto_model.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert (sd_a[name] == sd_b[name]).all(), name  # frozen
    assert not (
        sd_a["encoder.layer.5.output.dense.weight"] == sd_b["encoder.layer.5.output.dense.weight"]
    ).all()
    assert _json.loads((tmp_path / "run" / "embedder_train.json").read_text())["freeze_layers"] == 4
    with pytest.raises(InputError, match="the model has 6 layers"):
        train_embedder(EmbedTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "r2"), "freeze_layers": 9}))
