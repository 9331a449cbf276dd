"""Synthesis building blocks: reply parsing/validation, the prompt template, token/cost estimates, retry
headers, the API-key rule and the offline extractive synthesiser."""

from __future__ import annotations

import pytest

from dnfbot.bench.fake_openai import LONG, MEDIUM, SHORT, good_reply
from dnfbot.errors import InputError
from dnfbot.generate.endpoints import is_local, resolve_api_key
from dnfbot.synth import extractive
from dnfbot.synth.client import parse_retry_after
from dnfbot.synth.cost import PriceTable, estimate_tokens, load_prices
from dnfbot.synth.job import rejects_path
from dnfbot.synth.parse import InvalidReply, parse_reply, split_reply
from dnfbot.synth.prompt import load_template, parse_template

GOOD = good_reply("안톤 레이드")


def test_parse_good_reply_exact_fields():
    qa = parse_reply(GOOD)
    assert qa.to_dict() == {
        "question": "안톤 레이드에 대해 알려주세요.",
        "long": LONG,
        "medium": MEDIUM,
        "short": SHORT,
    }


def test_parse_tolerates_markdown_labels_and_leading_separator():
    reply = f"### **질문**: 무엇인가요?\n### 장문： {LONG}\n###\n중문 : {MEDIUM}\n### 단문: {SHORT}"
    assert parse_reply(reply).short == SHORT


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty reply"),
        (f"질문: 무엇인가요?\n###\n장문: {LONG}\n###\n중문: {MEDIUM}", "missing part '단문'"),
        (
            f"질문: 무엇?\n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: {SHORT}\n###\n단문: {SHORT}",
            "twice",
        ),
        (f"질문: \n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: {SHORT}", "empty part '질문'"),
        ("그냥 답입니다.", "without a 질문/장문/중문/단문 label"),
        (
            f"질문: 무엇?\n###\n장문: 한 문장입니다. 두 문장입니다.\n###\n중문: {MEDIUM}\n###\n단문: {SHORT}",
            "long answer has 2",
        ),
        (f"질문: 무엇?\n###\n장문: {LONG}\n###\n중문: {LONG}\n###\n단문: {SHORT}", "medium answer has 5"),
        (f"질문: 무엇?\n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: {MEDIUM}", "short answer has 2"),
        (f"질문: What is it?\n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: {SHORT}", "not in Korean"),
    ],
)
def test_invalid_replies_have_one_line_reasons(reply, reason):
    with pytest.raises(InvalidReply) as e:
        parse_reply(reply)
    assert reason in str(e.value) and "\n" not in str(e.value)


def test_split_reply_keeps_latin_game_terms():
    parts = split_reply(
        f"질문: DPS 세팅은?\n###\n장문: {LONG}\n###\n중문: {MEDIUM}\n###\n단문: MP 포션을 챙깁니다."
    )
    assert parts["question"] == "DPS 세팅은?"


def test_packaged_template_fills_subject_and_passage_only():
    t = load_template()
    msgs = t.messages("안톤 {레이드}", "본문 {subject} 그대로 {x}")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.startswith("다음 내용은 안톤 {레이드}에 관한 내용입니다.\n\n본문 {subject} 그대로 {x}\n")
    for label in ("질문", "장문", "중문", "단문", "###"):
        assert label in user
    assert len(t.digest) == 16 and t.digest == load_template().digest


def test_template_errors(tmp_path):
    with pytest.raises(InputError, match="no \\[user\\] section"):
        parse_template("[system]\n안녕", "t.txt")
    with pytest.raises(InputError, match="\\{passage\\}"):
        parse_template("[user]\n{subject}만 있습니다", "t.txt")
    with pytest.raises(InputError, match="before the first section"):
        parse_template("설명\n[user]\n{passage}", "t.txt")
    with pytest.raises(InputError, match="not found|No such|missing"):
        load_template(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"[user]\n\xff\xfe{passage}")
    with pytest.raises(InputError, match="bad.txt"):
        load_template(bad)
    custom = tmp_path / "mine.txt"
    custom.write_text("# 주석\n[user]\n{subject}: {passage}", encoding="utf-8")
    t = load_template(custom)
    assert t.system == "" and t.messages("가", "나") == [{"role": "user", "content": "가: 나"}]


def test_token_estimate_and_prices(tmp_path):
    assert estimate_tokens("가나다라마") == 6  # 5 Hangul × 1.2
    assert estimate_tokens("abc def") == 2  # 6 non-space × 0.3 → ceil(1.8)
    prices = load_prices()
    assert prices.lookup("gpt-4o-mini-2024-07-18") == prices.lookup("gpt-4o-mini")
    assert prices.cost("gpt-3.5-turbo", 1_000_000, 1_000_000) == pytest.approx(2.0)
    assert prices.cost("my-local-llama", 10, 10) is None
    assert PriceTable({"m": {"input": 1.0, "output": 2.0}}).cost("m", 500_000, 250_000) == pytest.approx(1.0)
    own = tmp_path / "p.yaml"
    own.write_text("models:\n  my-local-llama: {input: 0, output: 0}\n", encoding="utf-8")
    assert load_prices(own).cost("my-local-llama", 10, 10) == 0.0
    own.write_text("models:\n  m: {input: cheap}\n", encoding="utf-8")
    with pytest.raises(InputError, match="numeric"):
        load_prices(own)


def test_retry_after_headers():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "99999"}) == 600.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None


def test_api_key_only_required_for_remote_servers(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert is_local("http://127.0.0.1:8000/v1") and not is_local("https://api.openai.com/v1")
    assert resolve_api_key("http://localhost:11434/v1") == "not-needed"
    with pytest.raises(InputError, match="OPENAI_API_KEY is not set"):
        resolve_api_key("https://api.openai.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert resolve_api_key("https://api.openai.com/v1") == "sk-test"


def test_rejects_path():
    assert rejects_path("out/qa.jsonl").as_posix() == "out/qa.rejects.jsonl"
    assert rejects_path("qa.txt").as_posix() == "qa.txt.rejects.jsonl"


PASSAGE = (
    "안톤 레이드는 매주 목요일에 초기화됩니다. 입장하려면 명성 조건을 먼저 확인해야 합니다. "
    "파티는 네 명씩 세 파티로 구성됩니다. 각 파티는 서로 다른 공격대 경로를 맡게 됩니다. "
    "보스의 패턴은 단계마다 달라지므로 미리 익혀 두는 것이 좋습니다. 클리어 보상은 계정마다 한 번 받을 수 있습니다. "
    "- 목록 항목\n링크: http://example.com"
)


def test_extractive_is_deterministic_and_valid():
    a = extractive.synthesize("안톤 레이드 공략", PASSAGE)
    assert a == extractive.synthesize("안톤 레이드 공략", PASSAGE)
    assert a.question == "'안톤 레이드 공략'에서 안톤 레이드에 대해 알려주세요."
    assert a.short == "안톤 레이드는 매주 목요일에 초기화됩니다."
    assert (
        a.medium == "안톤 레이드는 매주 목요일에 초기화됩니다. 입장하려면 명성 조건을 먼저 확인해야 합니다."
    )
    assert a.long.startswith(a.medium) and "http" not in a.long and a.long.count("다.") == 6
    # the same rules an LLM reply must pass
    assert (
        parse_reply(f"질문: {a.question}\n###\n장문: {a.long}\n###\n중문: {a.medium}\n###\n단문: {a.short}")
        == a
    )


def test_extractive_rejects_short_passages_with_reason():
    with pytest.raises(InvalidReply, match="2 usable sentences"):
        extractive.synthesize("짧은 글", "첫 번째 문장은 충분히 깁니다. 두 번째 문장도 충분히 깁니다.")


@pytest.mark.parametrize(
    ("sentence", "topic"),
    [
        ("또한 버퍼의 부활 스킬은 쿨타임이 깁니다.", "버퍼의 부활 스킬"),
        ("끝없이 이어지는 패턴을 피해야 합니다.", None),  # an adverb, not 끝없 + 이
        ("보스와 선택 가능한 신수는 매주 바뀝니다.", "신수"),
    ],
)
def test_extractive_topics(sentence, topic):
    assert extractive.topic_of(sentence) == topic
