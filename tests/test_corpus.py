"""Loaders, cleaning (digits!), category tags and the corpus doctor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnfbot.corpus import load_corpus
from dnfbot.corpus.categories import categorize
from dnfbot.corpus.clean import clean_text, collapse_repeats
from dnfbot.corpus.doctor import check
from dnfbot.errors import InputError

MINI = Path(__file__).parent / "fixtures" / "mini_guide.json"


# --- cleaning -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("number", ["1000", "51693", "111", "2000000", "7.777"])
def test_cleaning_never_touches_digits(number):
    assert number in clean_text(f"보상은 {number}골드입니다")
    assert collapse_repeats(number) == number


def test_cleaning_collapses_repeated_characters_to_two():
    assert clean_text("와!!!! 대박ㅋㅋㅋㅋㅋ ~~~~") == "와!! 대박ㅋㅋ ~~"


def test_cleaning_restores_the_space_after_glued_korean_sentences():
    text = "신수를 선택해야 합니다.선택할 수 있는 신수는 매주 바뀝니다!각 신수는 다릅니다"
    want = "신수를 선택해야 합니다. 선택할 수 있는 신수는 매주 바뀝니다! 각 신수는 다릅니다"
    assert clean_text(text) == want
    untouched = "버전 1.5와 Lv.100, 아이템.txt"  # only Hangul + [.!?] + Hangul gets the space
    assert clean_text(untouched) == untouched


def test_cleaning_strips_urls_entities_nbsp_and_invisible_characters():
    raw = "영상 https://youtu.be/zF_N-WQecy0동영상 영역 &amp;nbsp;가\xa0나\u200b다\ufeff"
    assert clean_text(raw) == "영상 동영상 영역 가 나다"


def test_cleaning_strips_html_but_keeps_korean_angle_brackets():
    raw = '<p>첫 줄</p><div style="text-align: center;"></div> <목차> <<TP>> v\\:* {behavior:url(#default#vml);}'
    assert clean_text(raw) == "첫 줄 <목차> <<TP>>"


def test_cleaning_keeps_paragraph_breaks_and_drops_like_count():
    raw = "\n첫 문단입니다.\n\n\n둘째 문단입니다.\n52\n"
    assert clean_text(raw, like_count=True) == "첫 문단입니다.\n\n둘째 문단입니다."
    assert clean_text(raw).endswith("52")  # only guide articles carry a like count


# --- loaders ------------------------------------------------------------------------------------------------
def test_guide_loader_ids_categories_and_skips():
    docs, report = load_corpus(MINI)
    ids = [d.doc_id for d in docs]
    assert ids == ["0", "1", "2", "3", "4", "5"]  # source keys, in order
    assert report.skipped_empty == ["6"] and report.skipped_duplicate == ["7"]
    by = {d.doc_id: d for d in docs}
    assert (by["0"].category1, by["0"].category2, by["0"].category3) == (
        "공략",
        "레이드",
        "[레이드] 아스라한 : 무의 장막",
    )
    assert (by["1"].category1, by["1"].category2) == ("공략", "레기온")
    assert (by["2"].category1, by["2"].category2) == ("공략", "기타 던전")
    assert (by["3"].category1, by["3"].category2) == ("장비", None)
    assert "1000골드" in by["1"].text and "<p>" not in by["1"].text
    assert not by["0"].text.endswith("12")  # like count gone


def test_shifted_class_label_is_corrected_from_the_text():
    docs, report = load_corpus(MINI)
    by = {d.doc_id: d for d in docs}
    assert by["4"].category3 == "소울브링어 (소울테이커 / 다크로드)"
    assert by["4"].metadata["label"] == "웨펀마스터 (검성 / 검신)"
    assert report.label_mismatch == ["4"]
    # one passing mention of another class ("여스파") is not evidence: the label stays
    assert by["5"].category3 == "스트라이커(남) (무극 / 패황)"


def _cats(label, title, text):
    c = categorize(label, title, text)
    return c.category1, c.category2, c.category3


def test_categorize_table_rules():
    assert _cats("[특수 던전] 이면 경계", "t", "x") == ("공략", "기타 던전", "[특수 던전] 이면 경계")
    assert _cats("융합 장비", "t", "x")[:2] == ("장비", None)
    assert _cats("\xa0", "웨펀마스터 정보 모음집", "웨펀마스터 정보") == (
        "직업",
        None,
        "웨펀마스터 (검성 / 검신)",
    )


def test_jsonl_and_folder_loaders(tmp_path):
    jl = tmp_path / "docs.jsonl"
    jl.write_text(
        json.dumps(
            {
                "id": "a",
                "title": "제목",
                "text": "본문 내용은 충분히 길어야 합니다. 1000 골드.",
                "metadata": {"category1": "장비"},
            },
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    docs, _ = load_corpus(jl)
    assert docs[0].doc_id == "a" and docs[0].category1 == "장비" and "1000" in docs[0].text
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "raid.md").write_text(
        "# 레이드 메모\n\n바칼 레이드는 8인 공략입니다. 준비물은 물약입니다.", "utf-8"
    )
    docs, _ = load_corpus(folder)
    assert docs[0].doc_id == "sub/raid.md" and docs[0].title == "레이드 메모"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"title": {}, "content": {}}).encode(), "missing field 'category1'"),
        (b"\xff\xfe\x00bad", "not valid UTF-8"),
        (
            json.dumps(
                {"title": {"0": "t"}, "category1": {"0": "커스텀"}, "content": {"0": "\n3\n"}}
            ).encode(),
            "corpus is empty",
        ),
    ],
)
def test_bad_corpus_gives_one_line_error_naming_the_file(tmp_path, content, message):
    p = tmp_path / "corpus.json"
    p.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_corpus(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_jsonl_missing_field_names_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": "1", "text": "충분히 긴 본문입니다 정말로요"}\n{"id": "2"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"x.jsonl:2: missing field 'text'"):
        load_corpus(p)


def test_doctor_on_fixture():
    r = check(MINI)
    assert r["empty"]["ids"] == ["6"]
    assert r["exact_duplicates"]["ids"] == [["3", "7"]]
    assert r["invisible_characters"]["kinds"]["zero-width space"]["ids"] == ["0", "6"]
    assert r["trailing_like_count"]["articles"] == 8
    assert "1" in r["html_leftovers"]["examples"]
    assert [i["id"] for i in r["label_mismatch"]["items"]] == ["4"]


@pytest.mark.shared
def test_doctor_and_loader_on_the_real_guide_corpus(guide_corpus_path):
    r = check(guide_corpus_path)
    assert r["articles"] == 268
    assert r["empty"]["count"] >= 3 and r["exact_duplicates"]["groups"] >= 1
    assert r["invisible_characters"]["kinds"]["zero-width space"]["articles"] > 10
    assert r["html_leftovers"]["articles"] > 0
    assert r["trailing_like_count"]["articles"] > 250
    shifted = {i["id"]: i["detected"] for i in r["label_mismatch"]["items"]}
    assert int(r["label_mismatch"]["first_shifted_id"]) in range(105, 115)
    assert shifted["112"].startswith("소울브링어")  # a 소울브링어 guide labelled 웨펀마스터
    docs, report = load_corpus(guide_corpus_path)
    assert report.loaded + len(report.skipped_empty) + len(report.skipped_duplicate) == 268
    assert all("\u200b" not in d.text and "&nbsp;" not in d.text for d in docs)


def test_category_table_uses_exactly_the_vocabulary():
    """One vocabulary (corpus/vocabulary.py) for the table, the filters, the pickers and the help texts."""
    from importlib import resources

    import yaml

    from dnfbot.corpus.vocabulary import CATEGORY1, CATEGORY2, GUIDES

    data = yaml.safe_load(resources.files("dnfbot").joinpath("data/categories.yaml").read_text("utf-8"))
    rules = data["boards"]
    assert {r["category1"] for r in rules} | {"직업"} == set(CATEGORY1)  # 직업: the class boards
    assert {r["category2"] for r in rules if "category2" in r} == set(CATEGORY2)
    assert all(r["category1"] == GUIDES for r in rules if "category2" in r)
