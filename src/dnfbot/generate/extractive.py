"""Grounded extractive answers with no model: the guides' own sentences, each with its source.

Candidates are the sentences of every retrieved chunk of the top articles (rag.py gathers them), minus page
furniture (tables of contents, changelogs, "Ctrl+F" hints: corpus/sentences.junk_kind). A sentence scores

    concept share   the question's concepts it contains (retrieval/evidence.py), idf-weighted; concepts the
                    article's title already carries count less (every sentence of that article shares them)
  + bigram share    the question's character bigrams it contains (slang, spacing)
  + unit bonus      it has the unit the question asks for (%, 초, 명성, 레벨, 개 …)
  + follow bonus    it follows a strong match of the same article and has the asked unit that one lacks
  - penalties       headings, lower-ranked articles, sentences that are mostly not about the question

The answer leads with the best sentence, adds at most `max_sentences - 1` more that score close to it (the next
sentence of the same article first), never repeats a sentence — also not one the conversation already said —
and stays under ANSWER_CHARS. A long run-on sentence is clipped to its clauses around the matched terms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dnfbot.generate import GenerationRequest, Generator
from dnfbot.retrieval.evidence import Evidence, Query, wanted_units
from dnfbot.retrieval.passages import PassageAnalysis, Sentence

MAX_SENTENCE_CHARS = 300
ANSWER_CHARS = 350
TITLE_FACTOR = 0.35  # weight left to a concept the article's title already names
# The sentence score is a linear model over these features; HAND_WEIGHTS is the hand-tuned model, and a ranker
# trained on the eval set's tune half (`dnfbot train ranker`, data/ranker.json) replaces it when it is there.
FEATURES = (
    "concept_share",  # question concepts in the sentence (title concepts discounted)
    "bigram_share",  # question character bigrams in the sentence
    "unit",  # it has the unit the question asks for (%, 초, 명성, 레벨 …)
    "number",  # it has a number and the question asks "how much" with no unit
    "follows_match",  # the previous sentence's share, when this one adds the asked unit it lacks
    "heading",
    "too_long",  # hundreds of characters beyond MAX_SENTENCE_CHARS
    "article_rank",
    "in_window",  # inside the gate's best window
    "neighbour_share",  # the best concept share of the sentences around it
    "name_asked",  # the question asks for a name and the sentence holds a quoted/bracketed one
    "own_share",  # share of the concepts the title does not carry
    "length",  # hundreds of characters
    "rarest_matched",  # it holds the question's most specific (highest-weight) concept
    "unit_and_share",  # unit × concept share: the asked number next to the asked thing
    "opening",  # one of the article's first three sentences (greetings, introductions)
    "title_share",  # question concepts the article's title/class carries: how much the article is about it
)
# Scaled so that a softmax over candidates is as sharp as the trained ranker's.
HAND_WEIGHTS = 10 * np.array(
    [0.65, 0.35, 0.25, 0.08, 0.6, -0.3, -0.05, -0.04, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2]
)
_ASKS_NAME_RE = re.compile(r"뭐|뭘|무슨|어떤|이름|어느|누구|머")
_NAME_MARK_RE = re.compile(r"[\[<'\"‘“「『(]")
EXTRA_RATIO = 0.08  # a further sentence must be this likely, relative to the lead
NEXT_RATIO = 0.02  # … or this, for the sentence right after the lead
_CLAUSE_RE = re.compile(r"(?<=[,，])(?!\d)\s*|(?<=[며고서데면나])\s+|(?<=[:;])\s+|\s+(?=-\s)")
_FOCUS_CUT_RE = re.compile(r"\s*[/|]\s*|,(?!\d)\s*")
_NORM_RE = re.compile(r"[\s.,!?~…·\"'“”‘’()\[\]<>「」『』-]+")


@dataclass(frozen=True)
class Cited:
    """One answer sentence: verbatim text of passage `passage` (an index into request.passages)."""

    text: str
    passage: int
    score: float
    doc_start: int


def norm(text: str) -> str:
    """A sentence's identity for "never say it twice": case, spaces and punctuation ignored."""
    return _NORM_RE.sub("", text).lower()


class ExtractiveGenerator(Generator):
    name = "extractive"

    def __init__(self, max_sentences: int = 3, tokenizer=None, weights=None, **_: object):
        # **_: accepts the GenerationSettings other back ends take (settings=...), so all are built alike
        self.max_sentences = max_sentences
        self.weights = np.asarray(weights, dtype=np.float64) if weights is not None else default_weights()

    # --- scoring ---------------------------------------------------------------------------------------
    def features(
        self, query: Query, analyses: list[PassageAnalysis], evidence: Evidence, ranks: list[int]
    ) -> tuple[np.ndarray, list[tuple[int, Sentence]]]:
        """One row of FEATURES per candidate sentence (junk and sentences sharing nothing with the question
        are no candidates), and the (passage index, sentence) of each row."""
        concepts = query.concepts
        bigram_total = sum(query.bigrams.values()) or 1.0
        wanted = wanted_units(query)
        asks_name = bool(_ASKS_NAME_RE.search(query.question))
        rows, where = [], []
        for p, an in enumerate(analyses):
            bits, ctx = evidence.presence[p], evidence.context[p]
            weights = [c.weight * (TITLE_FACTOR if ctx >> i & 1 else 1.0) for i, c in enumerate(concepts)]
            total = sum(weights) or 1.0
            own_total = sum(c.weight for i, c in enumerate(concepts) if not ctx >> i & 1) or 1.0
            shares = [sum(w for i, w in enumerate(weights) if m >> i & 1) / total for m in bits]
            in_window = range(*evidence.window) if evidence.passage == p and evidence.window else range(0)
            top = max(range(len(concepts)), key=lambda i: concepts[i].weight) if concepts else None
            title_share = sum(c.weight for i, c in enumerate(concepts) if ctx >> i & 1) / (
                sum(c.weight for c in concepts) or 1.0
            )
            for k, s in enumerate(an.sentences):
                if s.junk:
                    continue
                share = shares[k]
                bigram = sum(w for g, w in query.bigrams.items() if g in s.bigrams) / bigram_total
                if share <= 0 and bigram <= 0:
                    continue
                unit = bool(wanted and s.units & wanted)
                prev = shares[k - 1] if k > 0 and not an.sentences[k - 1].junk else 0.0
                prev_unit = k > 0 and bool(wanted and an.sentences[k - 1].units & wanted)
                nxt = shares[k + 1] if k + 1 < len(shares) else 0.0
                own = sum(c.weight for i, c in enumerate(concepts) if bits[k] >> i & 1 and not ctx >> i & 1)
                rows.append(
                    [
                        share,
                        bigram,
                        float(unit),
                        float(not unit and "number" in query.asks and "number" in s.units),
                        prev if unit and not prev_unit else 0.0,
                        float(s.heading),
                        max(0, len(s.text) - MAX_SENTENCE_CHARS) / 100,
                        float(ranks[p]),
                        float(k in in_window),
                        max(prev, nxt),
                        float(asks_name and bool(_NAME_MARK_RE.search(s.text))),
                        own / own_total,
                        len(s.text) / 100,
                        float(top is not None and bool(bits[k] >> top & 1)),
                        float(unit) * share,
                        float(an.chunk.part == 1 and k < 3),
                        title_share,
                    ]
                )
                where.append((p, s))
        return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES)), where

    def score(self, query: Query, analyses: list[PassageAnalysis], evidence: Evidence, ranks: list[int]):
        """(score, passage index, sentence) for every candidate sentence: a linear model over FEATURES."""
        x, where = self.features(query, analyses, evidence, ranks)
        scores = x @ self.weights if len(where) else np.zeros(0)
        return [(float(sc), p, s) for sc, (p, s) in zip(scores, where, strict=True)]

    def compose(self, request: GenerationRequest) -> list[Cited]:
        """The answer sentences: the best first, then close ones, no repeats, under ANSWER_CHARS."""
        query, evidence, analyses = request.query, request.evidence, request.analyses
        if query is None or evidence is None or not analyses:
            return []
        ranks = request.passage_ranks or [0] * len(analyses)
        scored = sorted(self.score(query, analyses, evidence, ranks), key=lambda x: -x[0])
        if scored:  # scores → probabilities over the candidates (the ranker is trained as this softmax)
            top_score = scored[0][0]
            scored = [(float(np.exp(sc - top_score)), p, s) for sc, p, s in scored]
        said = [x for x in (norm(t) for t in request.said) if len(x) >= 8]
        chosen: list[tuple[float, int, Sentence, str]] = []
        seen: set[str] = set()
        used_chars = 0
        for score, p, s in scored:
            key = norm(s.text)
            if not key or key in seen:
                continue
            text = self._clip(s, query, analyses[p])
            if any(key in x or x in key for x in said):
                # Already said: only the clause that answers the new question may be given ("노멀 44,872" of
                # "노멀 44,872 / 익스퍼트 51,527 / …" after the question about 익스퍼트).
                text = self._focus(s, query, analyses[p])
                if not text or len(text) >= len(s.text) or norm(text) in said:
                    continue
            if chosen:
                lead_score, lead_p, lead, _ = chosen[0]
                is_next = _follows(analyses[lead_p], lead, analyses[p], s)
                if score < (NEXT_RATIO if is_next else EXTRA_RATIO) * lead_score or s.heading:
                    continue
                if used_chars + len(text) > ANSWER_CHARS:
                    continue
            chosen.append((score, p, s, text))
            seen.add(key)
            used_chars += len(text) + 1
            if len(chosen) >= self.max_sentences:
                break
        if not chosen:
            return []
        lead, rest = chosen[0], chosen[1:]
        rest.sort(key=lambda x: (ranks[x[1]], x[2].doc_start))
        return [Cited(text, p, sc, s.doc_start) for sc, p, s, text in [lead, *rest]]

    def _focus(self, s: Sentence, query: Query, analysis: PassageAnalysis) -> str | None:
        """The shortest run of clauses of `s` holding the question's own (not borrowed) strongest concept."""
        own = [c for c in query.concepts if not c.borrowed and c.surfaces]
        if not own:
            return None
        target = max(own, key=lambda c: c.weight)
        cuts = [0, *(m.end() for m in _FOCUS_CUT_RE.finditer(s.text)), len(s.text)]
        for a, b in zip(cuts, cuts[1:], strict=False):
            piece = s.text[a:b].strip(" ,/|")
            if piece and any(w in "".join(piece.split()).lower() for w in target.surfaces):
                return piece
        return None

    def _clip(self, s: Sentence, query: Query, analysis: PassageAnalysis) -> str:
        """A run-on sentence cut to the clauses that hold its matched terms (verbatim, no "…")."""
        if len(s.text) <= MAX_SENTENCE_CHARS:
            return s.text
        cuts = [0, *(m.end() for m in _CLAUSE_RE.finditer(s.text)), len(s.text)]
        pieces = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        terms = {t for c in query.concepts for v in c.variants for t in v}
        spans = [
            (st - s.start, en - s.start)
            for t, st, en in analysis.spans
            if t in terms and s.start <= st < s.end
        ]
        best, best_val = (0, min(len(s.text), MAX_SENTENCE_CHARS)), -1.0
        for i in range(len(pieces)):
            for j in range(i, len(pieces)):
                a, b = pieces[i][0], pieces[j][1]
                if b - a > MAX_SENTENCE_CHARS:
                    break
                val = sum(1 for st, en in spans if a <= st and en <= b) - (b - a) / 10_000
                if val > best_val:
                    best, best_val = (a, b), val
        a, b = best
        return s.text[a:b].strip(" ,")

    # --- Generator interface ---------------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> Iterator[str]:
        for i, c in enumerate(self.compose(request)):
            yield ("" if i == 0 else " ") + c.text


def default_weights() -> np.ndarray:
    """The trained ranker shipped in data/ranker.json when it matches FEATURES, else HAND_WEIGHTS."""
    import json
    from importlib import resources

    path = resources.files("dnfbot").joinpath("data/ranker.json")
    try:
        model = json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, ValueError):
        return HAND_WEIGHTS.copy()
    if tuple(model.get("features", ())) != FEATURES:
        return HAND_WEIGHTS.copy()
    return np.array(model["weights"], dtype=np.float64)


def _follows(pa: PassageAnalysis, a: Sentence, pb: PassageAnalysis, b: Sentence) -> bool:
    """Whether sentence b comes right after sentence a in the same article (chunks overlap: compare offsets)."""
    gap = b.doc_start - (a.doc_start + len(a.text))
    return pa.chunk.doc_id == pb.chunk.doc_id and 0 <= gap <= 3
