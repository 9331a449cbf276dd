"""The evidence gate: does any passage say what the question asks about, in one place?

A question becomes *concepts*: each slang/short form (data/slang.yaml, class nicknames) with every way the guides
write it ("뎀감" = 뎀감 | 피해 감소 | 데미지 감소 | 받는 피해), and each remaining Kiwi content term. Question
words and endings ("얼마", "몇퍼", "어케", "…임") are no concepts at all. A concept weighs its idf; one the guides
never use weighs `unknown_weight` (an unknown name is a sign the guides don't cover it, but one slang word must
not sink a question whose other terms are all there).

Coverage is measured inside a window of `window` consecutive sentences, not anywhere in a 3,000-character chunk:
the share of concept weight found in the window or in the article's title/class, blended with the share of the
question's character bigrams found there (robust to spacing and typos). The evidence is the best window over
the passages; the answer is refused below `answer.min_coverage`. Greetings and small talk are recognised apart.
The gate reads only the passages' stored tokens and the index's idf — the same for sparse, dense and hybrid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Container
from dataclasses import dataclass, field, replace

from dnfbot.corpus import aliases
from dnfbot.retrieval.passages import PassageAnalysis
from dnfbot.retrieval.tokenizer import KoreanTokenizer, char_bigrams

# What the question asks for → the unit a sentence answering it contains (keys of passages.UNIT_PATTERNS).
ASKS: dict[str, re.Pattern] = {
    "percent": re.compile(r"퍼센트|몇\s?퍼|몇\s?프로|%|확률|배율|비율|퍼야|퍼임|몇퍼"),
    "seconds": re.compile(r"몇\s?(?:초|분|시간)|초\s?(?:마다|동안|뒤|후)|시간|쿨타임|지속|언제"),
    "count": re.compile(r"몇\s?(?:개|마리|장|칸)|개수|갯수"),
    "times": re.compile(r"몇\s?(?:번|회|타)|횟수"),
    "level": re.compile(r"몇\s?(?:레벨|렙|랩)|레벨|렙|랩|lv", re.IGNORECASE),
    "fame": re.compile(r"명성"),
    "stage": re.compile(r"몇\s?(?:단계|스택|페이즈|각)|단계|스택"),
    "people": re.compile(r"몇\s?(?:명|인)|인원"),
    "date": re.compile(r"언제|날짜|며칠|몇\s?월|출시일|적용일|예정일"),
    "number": re.compile(r"몇|얼마|수치|며칠|퍼센트|확률"),
}
# Particles Kiwi sometimes leaves as nouns in chat spelling ("드나랑" → 드나 + 랑/NNG).
_PARTICLES = frozenset({"은", "는", "이", "가", "을", "를", "의", "도", "로", "에", "랑", "와", "과", "만", "요", "임", "함", "됨", "걍"})  # fmt: skip
_PARTICLE_SUFFIXES = frozenset({"은", "는", "이", "가", "을", "를", "도", "로", "랑", "와", "과", "만", "에", "의", "으로", "이랑", "에서", "까지", "부터", "한테"})  # fmt: skip
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_TO_BOT_RE = re.compile(r"(?:^|\s)(?:너|넌|너는|니가|네가|너도|당신|봇|챗봇)(?:\s|$|[?!.])")
_JAMO_OR_SYMBOLS_RE = re.compile(r"[\sㄱ-ㅎㅏ-ㅣ!?.~,;:^*()\[\]'\"ㅡ-]+")


@dataclass(frozen=True)
class Concept:
    text: str  # as the player wrote it
    variants: tuple[frozenset[str], ...]  # term sets: the concept is there when one set is all there
    weight: float
    known: bool  # the guides use at least one of its wordings
    boards: tuple[str, ...] = ()  # class boards it names (present in any article of that class)
    surfaces: tuple[str, ...] = ()  # its wordings without spaces (2+ characters): found verbatim counts too
    borrowed: bool = False  # from a follow-up's earlier topic, not the question itself
    tag: str = ""  # Kiwi tag of a plain term ("" for a slang/alias concept)

    def found_in(self, s) -> bool:
        """Whether sentence `s` holds this concept: all terms of one wording, or one wording verbatim."""
        return any(v <= s.terms for v in self.variants) or any(w in s.compact for w in self.surfaces)


@dataclass
class Query:
    question: str
    concepts: list[Concept]
    bigrams: dict[str, float]  # character bigram → weight
    asks: frozenset[str]  # units the question asks for
    chitchat: bool = False
    other_game: str | None = None  # the other game it is about ("메이플"): not answered from these guides
    expanded: str = ""  # the question plus its guide wordings (what retrieval searches)

    @property
    def term_weights(self) -> dict[str, float]:
        """term → weight over every wording (what an LLM back end or older code reads)."""
        out: dict[str, float] = {}
        for c in self.concepts:
            for v in c.variants:
                for t in v:
                    out[t] = max(out.get(t, 0.0), c.weight)
        return out


@dataclass
class Evidence:
    coverage: float
    concept_coverage: float = 0.0
    bigram_coverage: float = 0.0
    passage: int | None = None  # index of the passage with the best window
    window: tuple[int, int] | None = None  # its sentence range [a, b)
    # per passage, per sentence: which concepts it contains (bit i = concepts[i]); reused by the answerer
    presence: list[list[int]] = field(default_factory=list)
    context: list[int] = field(default_factory=list)  # per passage: concepts its title/class carries


class QueryReader:
    """Turns questions into concepts against one index (its vocabulary and idf)."""

    def __init__(
        self,
        tokenizer: KoreanTokenizer,
        idf: Callable[[str], float],
        vocabulary: Container[str],
        bigram_idf: Callable[[str], float] | None = None,
        unknown_weight: float = 2.0,
        number_factor: float = 0.3,
        short_factor: float = 0.5,
        verb_factor: float = 0.4,
        context_factor: float = 0.5,
    ):
        self.context_factor = context_factor
        self.verb_factor = verb_factor
        self.number_factor = number_factor
        self.short_factor = short_factor
        self.tokenizer = tokenizer
        self.idf = idf
        self.vocabulary = vocabulary
        self.bigram_idf = bigram_idf or (lambda _: 1.0)

        self.unknown_weight = unknown_weight

    def _weight(self, terms: frozenset[str]) -> tuple[float, bool]:
        known = [t for t in terms if t in self.vocabulary]
        if len(known) < len(terms) or not terms:
            return self.unknown_weight, False
        return max(self.idf(t) for t in known), True

    def _unglue(self, t: str) -> str:
        """An unknown term with a particle glued on ("딜도", "제랑") is the known term before it."""
        if t in self.vocabulary:
            return t
        for k in (2, 1):
            if len(t) > k and t[-k:] in _PARTICLE_SUFFIXES and t[:-k] in self.vocabulary:
                return t[:-k]
        return t

    def read(self, question: str, context: str = "", asked_before: str = "") -> Query:
        """The question's concepts. `context` (a follow-up's earlier topic) adds concepts at `context_factor` of
        their weight: the new question's own words decide which sentence answers it. `asked_before` (the
        earlier question) lends what it asked for: "노멀은요?" after "…명성 얼마예요?" asks for a number too."""
        if context:
            q = self.read(f"{context} {question}")
            q.asks = q.asks | frozenset(name for name, pat in ASKS.items() if pat.search(asked_before))
            own = {t for c in self.read(question).concepts for v in c.variants for t in v}
            q.concepts = [
                c
                if any(v & own for v in c.variants)
                else replace(c, weight=c.weight * self.context_factor, borrowed=True)
                for c in q.concepts
            ]
            return q
        matches = aliases.find(question, self.vocabulary)
        concepts: list[Concept] = []
        rest = list(question)
        for m in matches:
            forms = (m.alias.key, *m.alias.wordings)
            variants = tuple(
                dict.fromkeys(
                    frozenset(self.tokenizer.tokenize(f)) for f in forms if self.tokenizer.tokenize(f)
                )
            )
            if not variants:
                continue
            scored = [self._weight(v) for v in variants]
            known = [w for w, k in scored if k]
            weight = min(known) if known else self.unknown_weight
            concepts.append(
                Concept(
                    question[m.start : m.end], variants, weight, bool(known), m.alias.boards, _surfaces(forms)
                )
            )
            rest[m.start : m.end] = " " * (m.end - m.start)
        seen = {t for c in concepts for v in c.variants for t in v}
        for t, tag in self.tokenizer.tokenize_tagged("".join(rest)):
            t = self._unglue(t)
            if t in seen or t in _PARTICLES:
                continue
            seen.add(t)
            weight, known = self._weight(frozenset([t]))
            if tag in ("VV", "VA", "XR"):
                weight *= self.verb_factor  # "헷갈리", "괜찮", "나오": how players talk, rarely what they ask
            if _NUMBER_RE.fullmatch(t):
                weight *= self.number_factor  # "3월", "지금 5만 초반": context more often than the question
            elif len(t) == 1:
                weight *= self.short_factor  # one syllable ("때", "중", "구") is rarely what is asked about
            concepts.append(Concept(t, (frozenset([t]),), weight, known, (), _surfaces([t]), tag=tag))
        words = _content_words(aliases.canonical_query(question, self.vocabulary))
        bigrams = {b: self.bigram_idf(b) for w in words for b in char_bigrams(w)}
        asks = frozenset(name for name, pat in ASKS.items() if pat.search(question))
        return Query(
            question=question,
            concepts=concepts,
            bigrams=bigrams,
            asks=asks,
            chitchat=is_chitchat(question, concepts),
            other_game=aliases.other_game(question),
            expanded=aliases.expand_query(question, self.vocabulary),
        )


def _surfaces(forms) -> tuple[str, ...]:
    out = ["".join(f.split()).lower() for f in forms]
    return tuple(w for w in dict.fromkeys(out) if len(w) >= 2 and not w.isdigit())


def _content_words(question: str) -> list[str]:
    """The question's whitespace words, minus pure question words ("얼마임", "알려줘", "몇퍼")."""
    out = []
    for w in question.split():
        core = re.sub(r"[?!.~,]+$", "", w)
        if not core or aliases.is_question_word(core) or _is_asking(core):
            continue
        out.append(core)
    return out


_ASKING_RE = re.compile(
    r"^(?:얼마|몇|뭐|뭘|뭔|머|어케|어캐|어떻게|어떤|어느|언제|어디|왜|누구|무슨|알려|가르쳐|궁금|좀|혹시)"
    r"[가-힣]{0,4}$"
)


def _is_asking(word: str) -> bool:
    return bool(_ASKING_RE.match(word))


def is_chitchat(question: str, concepts: list[Concept]) -> bool:
    """Greetings and small talk: no concept the guides could answer, or nothing but small-talk words."""
    compact = _JAMO_OR_SYMBOLS_RE.sub("", question.lower())
    if not compact:
        return True  # "ㅋㅋㅋ", "???", "ㅎㅇ"
    words = aliases.table().chitchat
    if not concepts:
        return True
    if all(any(w in c.text.lower() for w in words) for c in concepts):
        return True
    # "넌 누가 만들었어?", "너 뭐 할 수 있어?": talking to the bot, with no noun the guides could be about
    talks_to_bot = _TO_BOT_RE.search(question) is not None
    only_verbs = all(c.tag in ("VV", "VA", "XR") for c in concepts)
    return only_verbs and (talks_to_bot or len(question.split()) <= 3)


def presence_bits(query: Query, analysis: PassageAnalysis) -> tuple[list[int], int]:
    """(per sentence: the concepts it holds, the concepts the article's title/class holds) as bit masks."""
    terms = frozenset(t for c in query.concepts for v in c.variants for t in v)
    surfaces = [w for c in query.concepts for w in c.surfaces]
    bits = []
    for s in analysis.sentences:
        m = 0
        # Most sentences share nothing with the question: one C-level test before the per-concept ones.
        if not terms.isdisjoint(s.terms) or any(w in s.compact for w in surfaces):
            for i, c in enumerate(query.concepts):
                if c.found_in(s):
                    m |= 1 << i
        bits.append(m)
    chunk = analysis.chunk
    title_terms = _title_terms(query, chunk.title)
    ctx = 0
    for i, c in enumerate(query.concepts):
        if any(v <= title_terms for v in c.variants) or (c.boards and chunk.category3 in c.boards):
            ctx |= 1 << i
    return bits, ctx


def _title_terms(query: Query, title: str) -> frozenset[str]:
    # Titles are short: a substring test of each concept's terms is enough and needs no Kiwi pass.
    return frozenset(t for c in query.concepts for v in c.variants for t in v if t in title.lower())


def weigh(query: Query, bits: int) -> float:
    total = sum(c.weight for c in query.concepts)
    if total <= 0:
        return 0.0
    return sum(c.weight for i, c in enumerate(query.concepts) if bits >> i & 1) / total


def wanted_units(query: Query) -> frozenset[str]:
    """The units an answer must contain: the specific ones asked for, else any number when one is asked."""
    specific = query.asks - {"number"}
    return specific or (query.asks & {"number"})


class _MaskWeights:
    """Share of total weight held by a bit mask, memoised: windows repeat the same masks."""

    def __init__(self, weights: list[float]):
        self.weights = weights
        self.total = sum(weights)
        self.memo: dict[int, float] = {}

    def __call__(self, mask: int) -> float:
        hit = self.memo.get(mask)
        if hit is None:
            w = sum(x for i, x in enumerate(self.weights) if mask >> i & 1)
            hit = self.memo[mask] = w / self.total if self.total > 0 else 0.0
        return hit


def gather(
    query: Query,
    analyses: list[PassageAnalysis],
    window: int = 3,
    bigram_share: float = 0.5,
    unit_penalty: float = 0.15,
) -> Evidence:
    """The best window of `window` consecutive sentences over the passages, and how much of the question it
    covers (concepts and bigrams blended by `bigram_share`). A question that asks for a number, a time or a
    date ("몇 초", "몇 퍼", "언제") is covered less (`unit_penalty`) by a window that holds none."""
    ev = Evidence(0.0)
    wanted = wanted_units(query)
    concept_share = _MaskWeights([c.weight for c in query.concepts])
    grams = list(query.bigrams)
    bigram_share_of = _MaskWeights([query.bigrams[g] for g in grams])

    def gram_mask(present) -> int:
        return sum(1 << i for i, g in enumerate(grams) if g in present)

    for p, an in enumerate(analyses):
        bits, ctx = presence_bits(query, an)
        ev.presence.append(bits)
        ev.context.append(ctx)
        n = len(an.sentences)
        gbits = [gram_mask(s.bigrams) for s in an.sentences]
        has_unit = [bool(wanted and s.units & wanted) for s in an.sentences]
        title_grams = gram_mask(set(char_bigrams(an.chunk.title)))
        for a in range(max(1, n - window + 1) if n else 0):
            b = min(n, a + window)
            mask, gmask = ctx, title_grams
            for k in range(a, b):
                mask |= bits[k]
                gmask |= gbits[k]
            concept_cov = concept_share(mask)
            bigram_cov = bigram_share_of(gmask) if grams else concept_cov
            cov = (1 - bigram_share) * concept_cov + bigram_share * bigram_cov
            if wanted and not any(has_unit[a:b]):
                cov -= unit_penalty
            if cov > ev.coverage + 1e-12:
                ev.coverage, ev.concept_coverage, ev.bigram_coverage = cov, concept_cov, bigram_cov
                ev.passage, ev.window = p, (a, b)
    if math.isnan(ev.coverage):
        ev.coverage = 0.0
    return ev
