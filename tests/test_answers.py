"""What a player reads: cleaning v2, page furniture, slang and aliases, the evidence gate's reading of questions."""

from __future__ import annotations

import pytest

from dnfbot.corpus.aliases import canonical_query, expand_query, find, other_game, query_classes
from dnfbot.corpus.clean import clean_text, glued_endings
from dnfbot.corpus.sentences import is_heading, junk_kind, split_sentences
from dnfbot.retrieval.evidence import QueryReader
from dnfbot.retrieval.tokenizer import get_tokenizer


@pytest.mark.parametrize(
    "raw, pieces",
    [
        # real glued runs from the guide corpus (article 5, 2, 71)
        (
            "확인할 수 있습니다무의장막의 몬스터는 총 5종류이며",
            ["확인할 수 있습니다", "무의장막의 몬스터는 총 5종류이며"],
        ),
        (
            "얻게됩니다각 기억의 효과는 위 사진과 같습니다또한 네임드를",
            ["얻게됩니다", "각 기억의 효과는 위 사진과 같습니다", "또한 네임드를"],
        ),
        ("줄여주세요3. 몬스터 패턴", ["줄여주세요", "3. 몬스터 패턴"]),
        ("가능함그렇기 때문에 추천", ["가능함", "그렇기 때문에 추천"]),
        (
            "○아스라한 : 무의 장막 가이드 차례@아스라한 : 입장 정보",
            ["○아스라한 : 무의 장막 가이드 차례", "아스라한 : 입장 정보"],
        ),
    ],
)
def test_glued_sentences_are_split(raw, pieces):
    text = clean_text(raw)
    assert [text[a:b] for a, b in split_sentences(text)] == pieces
    assert glued_endings(text) == 0


@pytest.mark.parametrize(
    "raw",
    [
        "좋습니다만 그래도",  # …니다만: one sentence
        "포함한 3유효 옵션",  # 포함 is a noun
        "파티원과함께 가세요",
        "있다면 좋고 없다면 괜찮다",
        "하세요라는 말",
        "최종 데미지 5% 증가+ @",  # "+@": plus more, not a bullet
        "7.38% 증가, 1.5초 뒤",  # decimals are no list numbers
    ],
)
def test_what_is_not_a_sentence_end_stays_whole(raw):
    text = clean_text(raw)
    assert len(split_sentences(text)) == 1, text


@pytest.mark.parametrize(
    "sentence, kind",
    [
        ("목차버서커 소개스킬트리추천장비탈리스만&룬", "toc"),
        ("목차", "toc"),
        ("1. 소개2. 특징과 장단점3. 스킬트리4. 스킬 소개", "toc"),
        ("CTRL + F 로 페이지내 검색을 통해 해당 목차로 이동 가능", "ctrl_f"),
        ("23.07.18 던담딜 수정23.08.30 패치 내용에 따른 수정23.09.19 연구 후 글 작성", "changelog"),
        ("2.25 개정판 첫 작성2.26 일부 오탈자 수정2.27 바칼 무기 융합 옵션 부분 설명 수정", "changelog"),
        ("카인 - 총류_롤랑 : 액션쾌감!! 던전앤파이터! (nexon.com)", "links"),
        ("무의 장막 입장 명성은 53680입니다.", None),
        ("(22.11.22 현재기준) 준종결플티는 아스트라 소환입니다.", None),  # one date is content
        ("한 차례 갈리게 됩니다.", None),
    ],
)
def test_page_furniture_is_recognised(sentence, kind):
    assert junk_kind(sentence) == kind


def test_headings_are_short_labels():
    assert is_heading("3. 캐릭터 스킬 트리") and is_heading("[버서커 소개]") and is_heading("-마치며-")
    assert not is_heading("무의 장막은 매주 한 번 클리어합니다.") and not is_heading("쿨감 30% 필요함")


def test_aliases_are_whole_words():
    # An alias is never read inside its own full form or inside a longer word.
    assert expand_query("이스핀즈 공략 간단하게 알려줘") == "이스핀즈 공략 간단하게 알려줘"
    assert canonical_query("차원회랑 카론") == "차원회랑 카론"
    assert expand_query("핀즈 공략") == "핀즈 공략 이스핀즈"
    assert canonical_query("회랑은 몇 명?") == "차원회랑은 몇 명?"
    assert query_classes("크리티컬 확률 몇 퍼") == [] and query_classes("크리 스킬트리") == ["크리에이터"]
    assert query_classes("미스트 코어") == [] and query_classes("미스 세팅") == [
        "미스트리스 (신세이어 / 리디머)"
    ]
    assert canonical_query("그럼 노말은?") == "그럼 일반은?"
    assert canonical_query("섀댄 쿨감") == "섀도우댄서 쿨타임 감소"
    # glued to a known word, the short form still counts; inside an unknown one it does not
    assert [m.alias.key for m in find("닼나스킬트리", {"스킬", "트리"})] == ["닼나"]
    assert find("닼나스킬트리") == []
    assert query_classes("런처 세팅") == [
        "런처(남) (블래스터 / 디스트로이어)",
        "런처(여) (헤비배럴 / 스톰트루퍼)",
    ]


def test_other_games_are_recognised_as_words():
    assert other_game("메이플 아델 6차 스킬") == "메이플" and other_game("로아 카멘 하드 입장") == "로아"
    assert other_game("롤 칼바람 꿀챔") == "롤" and other_game("롤링 어택 쿨타임") is None


@pytest.fixture(scope="module")
def reader():
    vocab = {
        "개전",
        "입장",
        "명성",
        "팔라딘",
        "디바인",
        "실드",
        "피해",
        "감소",
        "받",
        "데미지",
        "공략",
        "바칼",
    }
    return QueryReader(get_tokenizer(), lambda t: 3.0, vocab, unknown_weight=2.0)


def test_question_words_and_slang_particles_weigh_nothing(reader):
    q = reader.read("개전 명성컷 얼마임")
    texts = [c.text for c in q.concepts]
    assert texts == ["개전", "명성컷"] or sorted(texts) == ["개전", "명성컷"]
    cut = next(c for c in q.concepts if c.text == "명성컷")
    assert frozenset({"입장", "명성"}) in cut.variants and cut.known  # found as the guides write it
    q = reader.read("팔라 디실 쓰면 뎀감 얼마나 됨")
    assert {c.text for c in q.concepts} == {"팔라", "디실", "뎀감"}
    assert "percent" not in q.asks and "number" in q.asks


def test_greetings_and_small_talk_are_chitchat(reader):
    for q in [
        "안녕",
        "ㅎㅇ",
        "하이~",
        "너 누구야?",
        "고마워!",
        "ㅋㅋㅋㅋ",
        "넌 누가 만들었어?",
        "뭐 할 줄 알아?",
    ]:
        assert reader.read(q).chitchat, q
    for q in ["바칼 공략", "안녕 개전 입장 명성 얼마야", "팔라딘 디바인 실드"]:
        assert not reader.read(q).chitchat, q


def test_asked_units(reader):
    assert reader.read("쿨타임 몇 초임?").asks >= {"seconds"}
    assert reader.read("공속 몇퍼 붙음?").asks >= {"percent"}
    assert reader.read("무장 입장 명성 얼마").asks >= {"fame"}
    assert reader.read("리뉴얼 언제 됐어요?").asks >= {"date"}
