"""Text cleaning, as the original project did it — minus its bug.

The original collapsed any character repeated 3+ times, which turned "1000" into "100". Digits are never
touched here. Paragraph breaks (\\n) survive for the chunker.
"""

from __future__ import annotations

import html
import re

# Bump when cleaning changes the text: indexes built with other cleaning are then rebuilt.
CLEANING_VERSION = 2

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


def clean_text(text: str, *, like_count: bool = False) -> str:
    """Clean one article body. like_count: also drop the trailing like-count line (guide articles)."""
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
    text = _SPACES_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES_RE.sub("\n\n", text)
    return text.strip()


def clean_title(text: str) -> str:
    text = strip_invisible(text).replace("\xa0", " ")
    return _SPACES_RE.sub(" ", html.unescape(text)).strip()
