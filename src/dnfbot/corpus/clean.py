"""Text cleaning: invisible characters, URLs, HTML/CSS leftovers, repeated characters — and lost line breaks.

Repeated characters collapse to two, except digits ("1000" must stay "1000"). The scraper dropped the line
breaks, so sentences and list items arrive glued ("확인할 수 있습니다무의장막의", "…입장 정보@…보상 관련"): the
break is put back where a Korean sentence ending meets a new word, so sentences split and answers read well.
Paragraph breaks (\\n) survive for the chunker.
"""

from __future__ import annotations

import html
import re

# Bump when cleaning changes the text: indexes built with other cleaning are then rebuilt.
CLEANING_VERSION = 3

INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")
_URL_RE = re.compile(r"(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_NBSP_ENTITY_RE = re.compile(r"&(?:amp;)*nbsp;?", re.IGNORECASE)
# Known HTML tag names only: "<목차>" and "<<TP>>" are prose, not HTML.
_TAGS = r"(?:p|div|span|br|b|i|u|s|font|o:p|img|a|strong|em|li|ul|ol|table|tbody|tr|td|th|h[1-6]|hr|sup|sub|center|style|script|iframe|figure|label)"
_TAG_RE = re.compile(r"</?" + _TAGS + r"(?:\s+[\w:-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>]+))?)*\s*/?>")
_BROKEN_TAG_RE = re.compile(r"</?" + _TAGS + r"\s+(?=[\x00-\x7f]{0,2}[^\x00-\x7f])")
_CSS_RULE_RE = re.compile(r"[\w\\:*.#-]+\s*\{[^{}]*:[^{}]*;\s*\}")
_STYLE_ATTR_RE = re.compile(r"(?:style|align|face|color|class)=\"[^\"]*\"")
_REPEAT_RE = re.compile(r"([^\d\s])\1{2,}")
_SPACES_RE = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES_RE = re.compile(r"\n\s*\n+")
# The scraper dropped line breaks: "합니다.선택할" — put the space back so sentences split and read well.
_GLUED_SENTENCE_RE = re.compile(r"(?<=[가-힣][.!?])(?=[가-힣])")
_LIKE_COUNT_RE = re.compile(r"\n[ \t]*\d{1,6}[ \t]*\n?\s*$")
# A sentence ending glued to the next word with no punctuation ("됩니다각 기억의", "있음그렇기 때문에"): a
# line break goes back there. Three families, each with the followers that mean "not a boundary" after it:
# polite/formal endings (…니다 but not 니다만; …세요/어요/죠 but not a quote "하세요라는"), plain …다 (not
# 있다면/한다고/있다보면, and not when the next word is 다른/다음/다시…), and note-style …음/함/됨 (not the
# nouns 포함/잠수함, not 함께). Tuned against Kiwi's final-ending (EF) tags on the guide corpus.
_NEXT_WORD = r"(?=[가-힣A-Za-z0-9\[(<※★●○■□▶▷◆◇▲△▼-])"
_POLITE_END = (
    r"(?:[가-힣]니다(?!만)|세요|어요|아요|해요|돼요|되요|네요|에요|예요|데요|죠|려요|게요|까요|든요|구요"
    r"|군요|래요|대요|줘요|봐요|셔요|겨요|져요)(?!라[고는며]|란|고\s)" + _NEXT_WORD
)
_PLAIN_END = (
    r"(?:[있없했됐였겠같좋많높낮쉽렵길짧싶않었았는한하된진]다)"
    r"(?![면고는가며던니라더만든지거기네나구죠요음운잖손해하랑서도보시싶른단크양수이치녀르리발섯])"
    + _NEXT_WORD
)
_NOTE_END = (
    r"(?:[있없좋않했됐였같았었겠]음|(?<=[가-힣])(?<!포)(?<!잠수)[함됨])"
    r"(?![한하된되인일께무시의을은이에으과도만나말드감부계없돼입해될])" + _NEXT_WORD
)
_GLUED_ENDING_RE = re.compile(f"(?:{_POLITE_END}|{_PLAIN_END}|{_NOTE_END})")
# "@" was a list bullet on the boards ("…가이드 차례@…입장 정보@…"); "+@" / "+ @" means "plus more".
_BULLET_AT_RE = re.compile(r"(?<!\+)(?<!\+ )(?<!@)@(?!@)")
_CONDITIONAL_COMMENT_RE = re.compile(r"<!\[(?:end)?if[^\]]*\]>?(?:\s*-->)?|<!--\[if[^\]]*\]>")

HTML_LEFTOVER_RE = re.compile(
    r"</?" + _TAGS + r"(?:\s[^<>]{0,200})?/?>|&(?:amp;)*[a-zA-Z]{2,8};|[\w\\:*.#-]+\s*\{[^{}]*:[^{}]*;\s*\}"
)


def strip_invisible(text: str) -> str:
    return _INVISIBLE_RE.sub("", text)


def strip_html(text: str) -> str:
    text = _CSS_RULE_RE.sub(" ", text)
    text = _TAG_RE.sub(" ", text)
    text = _BROKEN_TAG_RE.sub(" ", text)
    text = _STYLE_ATTR_RE.sub(" ", text)
    text = re.sub(r"(?:[\w-]+:\s*[^;\"<>]{1,60};\s*)+\"\s*>", " ", text)  # tail of a cut style="...">
    text = re.sub(r"\"\s*>", " ", text)
    return text


def strip_like_count(text: str) -> str:
    """Each guide article ends with its like count on a line of its own ("...감사합니다\\n52\\n")."""
    return _LIKE_COUNT_RE.sub("", text)


def collapse_repeats(text: str) -> str:
    """'ㅋㅋㅋㅋ' → 'ㅋㅋ', '!!!!' → '!!' — but '1000' stays '1000'."""
    return _REPEAT_RE.sub(r"\1\1", text)


def clean_text(text: str, *, like_count: bool = False, restore_breaks: bool = True) -> str:
    """Clean one article body. like_count: also drop the trailing like-count line (guide articles);
    restore_breaks=False leaves glued sentences and "@" bullets as they are (corpus check counts them)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_invisible(text)
    if like_count:
        text = strip_like_count(text)
    text = _URL_RE.sub(" ", text)
    text = _NBSP_ENTITY_RE.sub(" ", text)
    text = strip_html(text)
    text = html.unescape(text)
    text = text.replace("\xa0", " ").replace("\u3000", " ")
    text = collapse_repeats(text)
    text = _GLUED_SENTENCE_RE.sub(" ", text)
    text = _CONDITIONAL_COMMENT_RE.sub(" ", text)
    if restore_breaks:
        text = _BULLET_AT_RE.sub("\n", text)
        text = split_glued_endings(text)
    text = _SPACES_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES_RE.sub("\n\n", text)
    return text.strip()


def split_glued_endings(text: str) -> str:
    """Put a line break back between a sentence ending and the word glued to it."""
    return _GLUED_ENDING_RE.sub(lambda m: m.group() + "\n", text)


def bullet_ats(text: str) -> int:
    return sum(1 for _ in _BULLET_AT_RE.finditer(text))


def glued_endings(text: str) -> int:
    """How many glued sentence endings a text has (corpus check; the readability metric of answers)."""
    return sum(1 for _ in _GLUED_ENDING_RE.finditer(text))


def clean_title(text: str) -> str:
    text = strip_invisible(text).replace("\xa0", " ")
    return _SPACES_RE.sub(" ", html.unescape(text)).strip()
