"""`dnfbot data sft | rm | ppo`: exact formats, three pairs per ranking record, stable splits, dedup, imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnfbot.cli import app
from dnfbot.datasets.build import (
    assign_split,
    build_ppo,
    build_rm,
    build_sft,
    dedup,
    normalize_question,
    pairs_from_ranking,
    parse_ranking,
)
from dnfbot.errors import InputError
from dnfbot.io import read_jsonl

runner = CliRunner()


def qa_rec(i: int, question: str, doc: str = "d1", **kw) -> dict:
    return {
        "id": f"k{i}",
        "doc_id": doc,
        "chunk_id": f"{doc}#1",
        "subject": "안톤 레이드",
        "question": question,
        "long": f"긴 답변 {i}입니다. 두 번째 문장입니다. 세 번째. 네 번째. 다섯 번째.",
        "medium": f"중간 답변 {i}입니다.",
        "short": f"짧은 답변 {i}.",
        "model": "m",
        "generator": "openai",
        "usage": {},
        **kw,
    }


def write_qa(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return path


def test_sft_records_byte_exact(tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl", [qa_rec(1, "안톤 레이드 입장 조건은?")])
    out = tmp_path / "sft.jsonl"
    s = build_sft([qa], out, kinds="long,short", valid_fraction=0.0)
    assert (s["records"], s["train"], s["valid"]) == (2, 2, 0)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        '{"prompt": "### 질문: 안톤 레이드 입장 조건은?\\n\\n### 답변: ", '
        '"completion": "긴 답변 1입니다. 두 번째 문장입니다. 세 번째. 네 번째. 다섯 번째.", '
        '"text": "### 질문: 안톤 레이드 입장 조건은?\\n\\n### 답변: 긴 답변 1입니다. 두 번째 문장입니다. 세 번째. '
        '네 번째. 다섯 번째.<|endoftext|>", "question": "안톤 레이드 입장 조건은?", "id": "k1:long", '
        '"source": "synth:openai:long", "doc_id": "d1", "split": "train"}'
    )
    second = json.loads(lines[1])
    assert second["completion"] == "짧은 답변 1." and second["text"].endswith(
        "### 답변: 짧은 답변 1.<|endoftext|>"
    )
    assert second["prompt"] + second["completion"] + "<|endoftext|>" == second["text"]


def test_sft_is_what_the_sft_trainer_loads(tmp_path):
    from dnfbot.datasets.splits import train_valid
    from dnfbot.train.common import load_records

    recs = [qa_rec(i, f"질문 {i}번은 무엇인가요?", doc=f"d{i}") for i in range(40)]
    out = tmp_path / "sft.jsonl"
    s = build_sft([write_qa(tmp_path / "qa.jsonl", recs)], out, valid_fraction=0.2)
    loaded = load_records(out, ("prompt", "completion"))
    split = train_valid(loaded, 0.05)
    # our split field is honoured
    assert len(split.valid) == s["valid"] > 0 and len(split.train) == s["train"] > 0


def test_sft_passages_and_imports(tmp_path, guide_corpus_path):
    import_file = tmp_path / "kochatgpt_1_SFT.json"
    import_file.write_text(
        json.dumps(
            [
                {
                    "prompt": "불고기용 고기 한우에요?",
                    "completion": "'저는 인공지능 챗봇이며…'",
                    "tokens": 193,
                },
                {"prompt": "", "completion": "빈 질문"},
                {"prompt": "쓰던 앱이 유료로 전환됐어", "completion": "'어떤 앱인지 모르기 때문에…'"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    from dnfbot.corpus import load_corpus
    from dnfbot.corpus.chunking import chunk_documents

    docs, _ = load_corpus([str(guide_corpus_path)])
    chunk = chunk_documents(docs[:1], 3000, 250)[0]
    qa = write_qa(
        tmp_path / "qa.jsonl", [qa_rec(1, "질문입니다?", doc=chunk.doc_id) | {"chunk_id": chunk.chunk_id}]
    )
    out = tmp_path / "sft.jsonl"
    s = build_sft([qa], out, passages=True, corpus=[str(guide_corpus_path)], imports=[import_file])
    rows = read_jsonl(out)
    assert s["passage_records"] == 1 and s["imported"] == 2 and s["import_skipped"] == 1
    assert "item 1: missing or empty field 'prompt'" in s["import_skipped_first"]
    p = next(r for r in rows if r["source"] == "passage")
    assert p["prompt"] == f"### 질문: '{chunk.title}'에 대한 설명 혹은 이야기입니다.\n\n### 답변: "
    assert p["completion"] == chunk.text.strip()
    assert [r["question"] for r in rows if r["source"] == "import:sft"] == [
        "불고기용 고기 한우에요?",
        "쓰던 앱이 유료로 전환됐어",
    ]
    with pytest.raises(InputError, match="--passages needs --corpus"):
        build_sft([qa], out, passages=True, corpus=None)


def test_rm_three_pairs_per_ranking_record(tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl", [qa_rec(1, "첫 질문?"), qa_rec(2, "둘째 질문?", doc="d2")])
    out = tmp_path / "rm.jsonl"
    s = build_rm([qa], out, valid_fraction=0.0)
    ranking = read_jsonl(tmp_path / "rm.ranking.jsonl")
    pairs = read_jsonl(out)
    assert s["ranking_records"] == 2 and s["pairs"] == len(pairs) == 6
    r = ranking[0]
    assert list(r)[:5] == ["prompt", "completion_0", "completion_1", "completion_2", "ranking"]
    assert r["prompt"] == "첫 질문?" and r["ranking"] == [0, 1, 2]
    assert (r["completion_0"], r["completion_2"]) == (qa_rec(1, "")["long"], "짧은 답변 1.")
    long, medium, short = (qa_rec(1, "")[k] for k in ("long", "medium", "short"))
    assert [(p["chosen"], p["rejected"]) for p in pairs[:3]] == [
        (long, medium),
        (long, short),
        (medium, short),
    ]
    assert all(p["prompt"] == "첫 질문?" and p["split"] == "train" for p in pairs[:3])

    # a configurable rule: short answers preferred
    build_rm([qa], out, ranking="short>medium>long", valid_fraction=0.0)
    assert read_jsonl(tmp_path / "rm.ranking.jsonl")[0]["ranking"] == [2, 1, 0]
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(out)[:3]] == [
        (short, medium),
        (short, long),
        (medium, long),
    ]
    with pytest.raises(InputError, match="--ranking"):
        parse_ranking("long>short")


def test_rm_imports_kochatgpt_ranking_format(tmp_path):
    rm = tmp_path / "kochatgpt_2_RM.jsonl"
    rec = {
        "prompt": "번디는 누구?",
        "completion_0": "가",
        "completion_1": "나",
        "completion_2": "다",
        "ranking": [1, 0, 2],
    }
    rm.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    s = build_rm([], tmp_path / "rm.jsonl", imports=[rm])
    assert s["imported"] == 1
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(tmp_path / "rm.jsonl")] == [
        ("나", "가"),
        ("나", "다"),
        ("가", "다"),
    ]
    assert (
        pairs_from_ranking(
            {"prompt": "q", **{f"completion_{i}": str(i) for i in range(3)}, "ranking": [2, 0, 1]}
        )[0]["chosen"]
        == "1"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**rec, "ranking": [0, 0, 1]}]), encoding="utf-8")
    from dnfbot.datasets.build import import_rm

    with pytest.raises(InputError, match=r"bad.json: item 0: 'ranking' must be a permutation"):
        import_rm(bad)


def test_split_is_stable_and_independent_of_other_records(tmp_path):
    recs = [qa_rec(i, f"{i}번째 던전은 어디인가요?", doc=f"d{i}") for i in range(200)]
    a = build_sft([write_qa(tmp_path / "a.jsonl", recs)], tmp_path / "a_sft.jsonl", valid_fraction=0.1)
    b = build_sft([write_qa(tmp_path / "b.jsonl", recs[:100])], tmp_path / "b_sft.jsonl", valid_fraction=0.1)
    split_a = {r["id"]: r["split"] for r in read_jsonl(tmp_path / "a_sft.jsonl")}
    split_b = {r["id"]: r["split"] for r in read_jsonl(tmp_path / "b_sft.jsonl")}
    assert all(split_a[k] == v for k, v in split_b.items())  # fewer records: nobody moved
    assert 5 <= a["valid"] <= 40 and b["valid"] <= a["valid"]
    # identical inputs → byte-identical output, and the known hash split of a fixed key
    build_sft([tmp_path / "a.jsonl"], tmp_path / "a2.jsonl", valid_fraction=0.1)
    assert (tmp_path / "a2.jsonl").read_bytes() == (tmp_path / "a_sft.jsonl").read_bytes()
    assert [assign_split(f"doc:d{i}", 0.5) for i in range(6)] == [
        assign_split(f"doc:d{i}", 0.5) for i in range(6)
    ]
    # split by doc: every record of an article lands on the same side
    same_doc = [qa_rec(i, f"다른 질문 {i}?", doc="dX") for i in range(5)]
    build_rm([write_qa(tmp_path / "c.jsonl", same_doc)], tmp_path / "rm.jsonl", valid_fraction=0.5)
    assert len({p["split"] for p in read_jsonl(tmp_path / "rm.jsonl")}) == 1


def test_dedup_near_identical_questions():
    qs = [
        "안톤 레이드에 입장하려면 어떤 조건을 만족하고 무엇을 준비해야 하나요?",
        "안톤레이드에 입장하려면 어떤 조건을 만족하고 무엇을 준비해야 하나요",  # spacing and punctuation only
        "안톤 레이드에 입장하려면 어떤 조건을 만족하고 무엇을 준비해야 하나?",  # one ending changed
        "루크 레이드 보상은 무엇인가요?",
        "바칼 레이드 보상은 무엇인가요?",  # a different boss: a different question, kept
    ]
    recs = [{"question": q} for q in qs]
    kept, removed = dedup(recs)
    assert [r["question"] for r in kept] == [qs[0], qs[3], qs[4]] and removed == 2
    kept, removed = dedup(recs, threshold=1.01)  # exact (normalised) only
    assert [r["question"] for r in kept] == [qs[0], qs[2], qs[3], qs[4]] and removed == 1
    assert normalize_question("ＡＢ 던전?!") == "ab던전"


def test_ppo_held_out_questions_mixed_with_imports(tmp_path, ppo_prompts_path):
    recs = [qa_rec(i, f"{i}번 보스의 패턴은 어떻게 되나요?", doc=f"d{i}") for i in range(100)]
    qa = write_qa(tmp_path / "qa.jsonl", recs)
    sft = build_sft([qa], tmp_path / "sft.jsonl", valid_fraction=0.2)
    out = tmp_path / "ppo.jsonl"
    s = build_ppo(
        [qa], out, valid_fraction=0.2, imports=[ppo_prompts_path], import_ratio=2.0, questions="valid"
    )
    rows = read_jsonl(out)
    own = [r for r in rows if r["source"] == "synth:openai"]
    held_out = {r["question"] for r in read_jsonl(tmp_path / "sft.jsonl") if r["split"] == "valid"}
    assert {r["prompt"] for r in own} == held_out and len(own) == sft["valid"] == s["from_qa"]
    assert s["imported"] == 2 * len(own) and all(set(r) == {"prompt", "source", "split"} for r in rows)
    assert s["import_skipped"] >= 1  # the public file has a few empty prompts: skipped and counted

    s2 = build_ppo(
        [qa],
        tmp_path / "ppo2.jsonl",
        valid_fraction=0.2,
        imports=[ppo_prompts_path],
        import_ratio=2.0,
        limit=30,
        questions="valid",
    )
    assert s2["records"] == 30 and s2["from_qa"] == 10  # the 1:2 mix is kept
    from dnfbot.train.rlhf.run import load_prompts

    assert len(load_prompts(out)) == s["records"]


def test_ppo_prompts_keep_both_splits_by_default(tmp_path):
    # train ppo trains on split=train and evaluates on split=valid: the default file must hold both
    recs = [qa_rec(i, f"{i}번 보스의 패턴은 어떻게 되나요?", doc=f"d{i}") for i in range(100)]
    qa = write_qa(tmp_path / "qa.jsonl", recs)
    sft = build_sft([qa], tmp_path / "sft.jsonl", valid_fraction=0.2)
    s = build_ppo([qa], tmp_path / "ppo.jsonl", valid_fraction=0.2)
    rows = read_jsonl(tmp_path / "ppo.jsonl")
    assert s["records"] == 100 and s["questions"] == "all"
    valid = {r["prompt"] for r in rows if r["split"] == "valid"}
    assert valid == {r["question"] for r in read_jsonl(tmp_path / "sft.jsonl") if r["split"] == "valid"}
    assert len(valid) == sft["valid"] and sum(r["split"] == "train" for r in rows) == 100 - len(valid)


def test_cli_data_verbs(tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl", [qa_rec(i, f"{i}번 질문?", doc=f"d{i}") for i in range(10)])
    r = runner.invoke(
        app,
        [
            "data",
            "sft",
            "--qa",
            str(qa),
            "--out",
            str(tmp_path / "sft.jsonl"),
            "--answers",
            "long,medium,short",
            "--split-files",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["records"] == 30 and s["answers"] == ["long", "medium", "short"]
    assert len(read_jsonl(s["train_out"])) + len(read_jsonl(s["valid_out"])) == 30
    r = runner.invoke(app, ["data", "rm", "--qa", str(qa), "--out", str(tmp_path / "rm.jsonl"), "--json"])
    assert json.loads(r.stdout)["pairs"] == 30
    r = runner.invoke(
        app,
        [
            "data",
            "ppo",
            "--qa",
            str(qa),
            "--questions",
            "all",
            "--out",
            str(tmp_path / "ppo.jsonl"),
            "--json",
        ],
    )
    assert json.loads(r.stdout)["records"] == 10
    r = runner.invoke(
        app, ["data", "sft", "--qa", str(qa), "--out", str(tmp_path / "x.jsonl"), "--answers", "huge"]
    )
    assert isinstance(r.exception, InputError) and "--answers huge" in str(r.exception)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "long": "a", "medium": "b"}\n', encoding="utf-8")
    r = runner.invoke(app, ["data", "rm", "--qa", str(bad), "--out", str(tmp_path / "y.jsonl")])
    assert str(r.exception) == f"{bad}:1: missing or empty field 'short'"
