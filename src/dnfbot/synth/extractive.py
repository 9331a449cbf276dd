"""`--backend extractive`: question + long/medium/short answers with no LLM, from the passage's own sentences.

Deterministic and offline, so that every later stage (dataset builders, SFT, RM, PPO) runs in CI with no API.
Quality is that of a lead summary, not of an LLM:
- candidate sentences: the passage's sentences (fast punctuation splitter) that read as Korean prose —
  15..300 characters, mostly Hangul, ending like a sentence;
- long = the first five to seven (up to 1,000 characters); Kiwi splits it, and medium = its first two
  sentences, short = its first one;
- question = the short answer's topic (its words up to the first topic/subject particle 은/는/이/가 after a
  noun, found with Kiwi's tagger) asked about the subject:
  "'{subject}'에서 {topic}에 대해 알려주세요.", else "'{subject}'에 대해 알려주세요.".
The result passes the same validation as an LLM reply; a passage with fewer than five usable sentences is a
reject with its reason.
"""

from __future__ import annotations

import re

from dnfbot.corpus.sentences import split_sentences
from dnfbot.synth.parse import QA, InvalidReply, get_kiwi, is_korean, validate

MIN_CHARS, MAX_CHARS = 15, 300
MIN_LONG, LONG_MAX_SENTENCES, LONG_MAX_CHARS = 5, 7, 1000
MAX_CANDIDATES = LONG_MAX_SENTENCES
_ENDS = re.compile(r"(?:[.!?]|[다요죠])[\"'”’)\]]*$")
# Discourse words that start a sentence but not its topic ("또한 버퍼의 부활 스킬은 …").
_OPENERS = frozenset(
    [
        "또한",
        "다만",
        "그리고",
        "하지만",
        "그러나",
        "만약",
        "보통",
        "특히",
        "이때",
        "이",
        "그",
        "저",
        "그래서",
        "따라서",
        "물론",
        "먼저",
        "우선",
        "참고로",
        "그런데",
        "즉",
        "단",
        "일단",
        "사실",
        "결국",
        "그냥",
    ]
)
_LEADING_JUNK = re.compile(r"^[\s\-–—*•·#>▶■□◆◇○●※]+|^\(\d+\)\s*|^\d+[.)]\s*")
GENERATOR = "extractive"
MODEL = "extractive-v2"  # part of the record key: bump when the rules above change


def candidate_sentences(text: str) -> list[str]:
    out = []
    for a, b in split_sentences(text):
        s = " ".join(text[a:b].split())
        s = _LEADING_JUNK.sub("", s).strip()
        if not (MIN_CHARS <= len(s) <= MAX_CHARS) or not _ENDS.search(s) or not is_korean(s):
            continue
        if s[-1] in "다요죠":
            s += "."
        out.append(s)
        if len(out) >= MAX_CANDIDATES:
            break
    return out


def topic_of(sentence: str) -> str | None:
    """'또한 버퍼의 부활 스킬은 쿨타임이 깁니다.' → '버퍼의 부활 스킬'.

    The topic is the noun phrase (nouns, numbers, Latin words, joined by 의) right before the sentence's first
    topic/subject particle (Kiwi tags JX 은/는, JKS 이/가), so adverbs such as '끝없이' are not mistaken for
    '끝없' + '이', and verbs or brackets before the phrase are left out."""
    toks = [t for t in get_kiwi().tokenize(sentence) if t.start <= 80]
    for i, tok in enumerate(toks):
        if not (tok.tag in _TOPIC_TAGS and tok.form in _TOPIC_FORMS):
            continue
        j = i
        while j > 0 and toks[j - 1].tag in _PHRASE_TAGS:
            j -= 1
        while j < i and toks[j].tag == "JKG":  # a phrase does not start with 의
            j += 1
        if j == i or toks[i - 1].tag not in _NOUN_TAGS:
            continue  # no noun right before the particle: not a topic
        topic = sentence[toks[j].start : tok.start].strip()
        return topic if 2 <= len(topic) <= 30 else None
    return None


_TOPIC_TAGS = {"JX", "JKS"}
_TOPIC_FORMS = {"은", "는", "이", "가"}
_NOUN_TAGS = {"NNG", "NNP", "SL", "SH", "SN", "XSN", "NR"}
_PHRASE_TAGS = _NOUN_TAGS | {"JKG", "XPN"}


def make_question(subject: str, short: str, part: int) -> str:
    topic = topic_of(short)
    if topic:
        return f"'{subject}'에서 {topic}에 대해 알려주세요."
    if part <= 1:
        return f"'{subject}'에 대해 알려주세요."
    return f"'{subject}'의 {part}번째 부분에 대해 알려주세요."


def synthesize(subject: str, passage: str, part: int = 1) -> QA:
    """QA for one passage, or InvalidReply with the reason it cannot make one.

    Kiwi (the slow part) sees only the long answer; medium and short are cut from its sentences."""
    cands = candidate_sentences(passage)
    if len(cands) < MIN_LONG:
        raise InvalidReply(f"passage has {len(cands)} usable sentences (a long answer needs {MIN_LONG})")
    n = MIN_LONG
    while n < min(len(cands), LONG_MAX_SENTENCES) and sum(map(len, cands[: n + 1])) <= LONG_MAX_CHARS:
        n += 1
    long = " ".join(cands[:n])
    sents = [t.text.strip() for t in get_kiwi().split_into_sents(long)]
    good = [t for t in sents if len(t) >= MIN_CHARS and is_korean(t)]
    if len(good) < 2:
        raise InvalidReply(f"passage has {len(good)} usable sentences (medium and short answers need 2)")
    qa = QA(
        question=make_question(subject, good[0], part),
        long=long,
        medium=" ".join(good[:2]),
        short=good[0],
    )
    return validate(qa, long_sentences=len(sents))
