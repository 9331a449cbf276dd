"""Korean-aware tokens for BM25: Kiwi morphemes, content words only.

"장막의" and "장막" are different whitespace tokens — the reason whitespace BM25 misses Korean matches — but
the same morpheme here. Kept: nouns, numerals, numbers ("1000"), Latin words ("MP", lowercased), hanja, roots and
verb/adjective stems. Class and dungeon names from the category table are added as proper nouns so that
"아스라한" is not parsed as 아스라/XR + 하/XSA.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterable, Iterator

from dnfbot.corpus.aliases import is_question_word

KEEP_TAGS = frozenset({"NNG", "NNP", "NR", "SN", "SL", "SH", "XR", "VV", "VA", "W_HASHTAG"})
SHORT_DROP_TAGS = frozenset({"VV", "VA", "XR"})  # one-syllable stems (되, 하, 좋) carry little meaning
# How questions are phrased, not what they ask about: "알려줘", "궁금해", "어떻게 해?" — words that a guide
# never needs to contain to answer, so they must not count against the evidence.
ASKING_WORDS = frozenset(
    {
        "알리",
        "알려주",
        "가르치",
        "가르쳐주",
        "말하",
        "말해주",
        "어떻",
        "어떡하",
        "궁금",
        "질문",
        "궁금하",
        "무엇",
        "뭐",
        "알",
        "모르",
        "싶",
        "있",
        "없",
        "되",
        "하",
        "주",
        "보",
    }
)
TOKENIZER_VERSION = "kiwi-content-v5"

_EXTRA_NOUNS = (
    "아스라한",
    "무의 장막",
    "바칼",
    "이스핀즈",
    "어둑섬",
    "차원회랑",
    "이면 경계",
    "게이볼그",
    "개전",
    "아칸",
    "신수",
    "커스텀",
    "융합 장비",
    "상급 던전",
    "마나실드",
    "결전",
    "근원",
    "탈리스만",
    "오즈마",
    "레기온",
    "레이드",
)


_CACHE_MAX_CHARS = 512
# Long documents (tokenize_spans_windowed): tokenized whole up to WHOLE_MAX_CHARS (the longest guide article
# has 42k; Kiwi's cost is still about linear there), in WINDOW_CHARS windows beyond; BATCH_CHARS per Kiwi call.
WHOLE_MAX_CHARS = 50_000
WINDOW_CHARS = 4_000
BATCH_CHARS = 1_000_000


class KoreanTokenizer:
    """Thread-safe wrapper around one Kiwi instance (loading Kiwi takes about a second: do it once)."""

    def __init__(self, num_workers: int | None = None):
        from kiwipiepy import Kiwi

        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        # No multi-word-expression or typo dictionaries: ~10% faster builds, dev-set quality unchanged.
        self._kiwi = Kiwi(num_workers=workers, load_multi_dict=False, load_typo_dict=False)
        # Unknown-word candidates up to 3 characters instead of 6: ~45% less CPU per article with 99.95% of
        # the morphemes unchanged on the guide corpus (bench: dnfbot bench retrieval).
        self._kiwi.global_config.max_unk_form_size = 3
        self._lock = threading.Lock()
        for word in _user_words():
            self._kiwi.add_user_word(word, "NNP", 0.0)

    def tokenize(self, text: str) -> list[str]:
        if len(text) <= _CACHE_MAX_CHARS:  # queries: retrieval and answering ask for the same text
            return list(self._cached(text))
        return self._tokenize(text)

    def _tokenize(self, text: str) -> list[str]:
        return [form for form, _ in self._tagged(text)]

    def glued_sentence_ends(self, text: str) -> int:
        """How many times a final ending (Kiwi tag EF) runs straight into the next word ("있습니다무의장막"):
        an independent check of cleaning's glued-sentence repair, used by `dnfbot eval answers`."""
        with self._lock:
            toks = self._kiwi.tokenize(text)
        return sum(
            1
            for a, b in zip(toks, toks[1:], strict=False)
            if a.tag == "EF"
            and a.start + a.len == b.start
            and b.tag[:1] in "NVMX"
            and b.tag not in ("XSN", "XSV", "XSA")
        )

    def tokenize_tagged(self, text: str) -> list[tuple[str, str]]:
        """(term, Kiwi tag) for the same terms as tokenize: the gate weighs names above verbs."""
        return list(self._cached_tagged(text)) if len(text) <= _CACHE_MAX_CHARS else self._tagged(text)

    def _tagged(self, text: str) -> list[tuple[str, str]]:
        with self._lock:
            toks = self._kiwi.tokenize(text)
        return [(_norm(t.form), t.tag.split("-")[0]) for t in toks if _wanted(t)]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one tokenizer per process, kept for its lifetime
    def _cached_tagged(self, text: str) -> tuple[tuple[str, str], ...]:
        return tuple(self._tagged(text))

    @staticmethod
    def clear_cache() -> None:
        """Forget cached query tokens (benchmarks time cold queries)."""
        KoreanTokenizer._cached.cache_clear()
        KoreanTokenizer._cached_tagged.cache_clear()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one tokenizer per process, kept for its lifetime
    def _cached(self, text: str) -> tuple[str, ...]:
        return tuple(form for form, _ in self.tokenize_tagged(text))

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        """Batch tokenization on Kiwi's worker threads."""
        with self._lock:
            return [_keep(tokens) for tokens in self._kiwi.tokenize(texts)]

    def tokenize_spans_many(self, texts: list[str]) -> list[list[tuple[str, int, int]]]:
        """(token, start, end) per kept token of each text — for mapping tokens onto sentences; Kiwi's threads."""
        with self._lock:
            return [
                [(_norm(t.form), t.start, t.start + t.len) for t in toks if _wanted(t)]
                for toks in self._kiwi.tokenize(texts)
            ]

    def tokenize_spans_windowed(
        self,
        texts: Iterable[str],
        *,
        max_whole: int = WHOLE_MAX_CHARS,
        window: int = WINDOW_CHARS,
        batch_chars: int = BATCH_CHARS,
    ) -> Iterator[tuple[int, int, list[tuple[str, int, int]]]]:
        """tokenize_spans_many at a cost linear in the text's length, streamed: yields (text index, covered, spans).

        Kiwi's cost grows faster than the length of what it is given (120k characters 4 s, 240k 12 s, 1 MB
        minutes), so a text longer than `max_whole` is tokenized in windows of about `window` characters cut
        at a paragraph, line, sentence or space (`text_windows`); offsets are the text's own, so spans point
        into it exactly. A text up to `max_whole` (every guide article) is tokenized whole: its tokens are the
        same as tokenize_spans_many's. Pieces come in text order, a text's windows in order; `covered` is the
        end of the text's part tokenized so far (len(text) with its last piece). At most about `batch_chars`
        characters are in flight at once (Kiwi's worker threads share each batch), so memory stays bounded
        whatever the corpus."""
        batch: list[tuple[int, int, int, str]] = []  # (text index, start, end, piece)
        size = 0
        for ti, text in enumerate(texts):
            spans = text_windows(text, window) if len(text) > max_whole else [(0, len(text))]
            for a, b in spans:
                batch.append((ti, a, b, text[a:b] if (a, b) != (0, len(text)) else text))
                size += b - a
                if size >= batch_chars:
                    yield from self._spans_batch(batch)
                    batch, size = [], 0
        if batch:
            yield from self._spans_batch(batch)

    def _spans_batch(self, batch: list[tuple[int, int, int, str]]) -> Iterator[tuple[int, int, list]]:
        with self._lock:
            results = list(self._kiwi.tokenize([piece for _, _, _, piece in batch]))
        for (ti, a, b, _), toks in zip(batch, results, strict=True):
            yield (
                ti,
                b,
                [(form, a + t.start, a + t.start + t.len) for t in toks if (form := _kept(t)) is not None],
            )


def _norm(form: str) -> str:
    return form.lower()


_WANTED_CACHE: dict[tuple[str, str], bool] = {}


def _wanted(tok) -> bool:
    key = (tok.form, tok.tag)
    hit = _WANTED_CACHE.get(key)
    if hit is None:  # a corpus repeats the same (form, tag) pairs: decide each once
        tag = tok.tag.split("-")[0]  # "VV-R" → "VV"
        hit = (
            tag in KEEP_TAGS
            and tok.form not in ASKING_WORDS
            and not is_question_word(tok.form)
            and not (tag in SHORT_DROP_TAGS and len(tok.form) < 2)
        )
        _WANTED_CACHE[key] = hit
    return hit


_KEPT: dict[tuple[str, str], str | None] = {}


def _kept(tok) -> str | None:
    """The token's normalised form if `_wanted`, else None — one shared str per distinct form, so that a big
    corpus holds each token's text once."""
    key = (tok.form, tok.tag)
    try:
        return _KEPT[key]
    except KeyError:
        form = _norm(tok.form) if _wanted(tok) else None
        _KEPT[key] = form
        return form


def text_windows(text: str, window: int = 4000) -> list[tuple[int, int]]:
    """[start, end) windows covering `text`, each at most `window` characters, cut at the last paragraph break
    in the window's back half, else a line break, a sentence end, a space, else at `window` itself."""
    out, a, n = [], 0, len(text)
    while n - a > window:
        lo, hi = a + window // 2, a + window
        cut = -1
        for sep in ("\n\n", "\n", ". ", "? ", "! ", " "):
            j = text.rfind(sep, lo, hi)
            if j >= 0:
                cut = j + len(sep)
                break
        cut = cut if cut > a else hi
        out.append((a, cut))
        a = cut
    out.append((a, n))
    return out


def _keep(tokens: Iterable) -> list[str]:
    return [_norm(t.form) for t in tokens if _wanted(t)]


def _user_words() -> list[str]:
    """Class and dungeon names, and every slang key and guide wording ("공속", "명성", "뎀감"): Kiwi would
    otherwise cut them ("공"+"속", "명"+"성") differently in a question than in the guides."""
    from dnfbot.corpus.aliases import user_words
    from dnfbot.corpus.categories import table

    words = set(user_words())
    for c in table().classes:
        for term in c.terms:
            words.update(w for w in re.split(r"[\s()/]+", term) if len(w) >= 2)
    for word in _EXTRA_NOUNS:
        words.update(w for w in word.split() if len(w) >= 2)
    return sorted(words)


_RUN_RE = re.compile(r"[가-힣]+|[A-Za-z]+|\d+(?:\.\d+)?")


def char_bigrams(text: str) -> list[str]:
    """Hangul runs as overlapping character bigrams ("무의장막" → 무의, 의장, 장막); Latin words and numbers whole.

    Robust where morphemes fail: slang and abbreviations ("무장", "쿨감"), missing spaces, unknown words."""
    out: list[str] = []
    for m in _RUN_RE.finditer(text.lower()):
        w = m.group()
        if len(w) < 2 or not ("가" <= w[0] <= "힣"):
            out.append(w)
        else:
            out.extend(w[i : i + 2] for i in range(len(w) - 1))
    return out


_shared: KoreanTokenizer | None = None
_shared_lock = threading.Lock()


def get_tokenizer() -> KoreanTokenizer:
    """The process-wide tokenizer."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = KoreanTokenizer()
        return _shared
