"""Re-ranking the first stage's articles by the evidence they hold.

BM25 and e5 score a 3,000-character chunk as a whole, and the guides on one subject (five 팔라딘 guides, three
on 어둑섬) read alike at that scale; a player asks for one fact, which one of them states. So the first stage
(sparse, dense or hybrid) hands its best `retrieval.rerank_candidates` articles to the evidence gate
(evidence.py), and each article is scored again as

    score / best first-stage score  +  retrieval.rerank_weight · coverage

where coverage is the gate's: the share of the question's concepts (slang resolved) found within one window of
`retrieval.rerank_window` sentences of the article's chunks, nearest the hit first (a narrower window than
the gate's: one fact sits in one or two sentences). An article whose sentences hold the
whole question rises above one that merely shares its subject. Ties keep the first stage's order; a question
with no concepts keeps it entirely. The hit's chunk becomes the one holding the best window, so a citation
points where the evidence is.

Measured on eval/ (docs/dense.md "Re-ranking by evidence"): MRR@5 +0.04–0.06 for BM25 and for hybrid e5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dnfbot.config import AnswerSettings
from dnfbot.corpus.chunking import Chunk
from dnfbot.retrieval import evidence as gate
from dnfbot.retrieval.passages import PassageCache
from dnfbot.retrieval.sparse import Hit, SparseIndex


def article_chunks(index: SparseIndex, hit: Hit, limit: int) -> list[Chunk]:
    """The chunks of a hit's article, at most `limit`, those nearest the hit chunk, in article order."""
    positions = index.doc_chunks(hit.chunk.doc_id) or [index.position[hit.chunk.chunk_id]]
    nearest = sorted(positions, key=lambda i: abs(index.chunks[i].part - hit.chunk.part))[:limit]
    return [index.chunks[i] for i in sorted(nearest)]


@dataclass
class EvidenceReranker:
    """`rerank(query, hits)`: the hits (one per article, best first) in evidence order; see the module doc."""

    index: SparseIndex
    passages: PassageCache
    answer: AnswerSettings
    candidates: int
    weight: float
    window: int

    @property
    def active(self) -> bool:
        return self.candidates > 0 and self.weight > 0

    def fetch(self, k: int) -> int:
        """How many articles to ask the first stage for, to return k."""
        return max(k, self.candidates) if self.active else k

    def coverage(self, query: gate.Query, hit: Hit) -> tuple[float, Chunk]:
        """The article's evidence coverage and the chunk that holds its best window."""
        a = self.answer
        chunks = article_chunks(self.index, hit, a.chunks_per_article)
        ev = gate.gather(
            query, [self.passages.get(c) for c in chunks], self.window, a.bigram_share, a.unit_penalty
        )
        return ev.coverage, (chunks[ev.passage] if ev.passage is not None else hit.chunk)

    def rerank(self, query: gate.Query, hits: list[Hit]) -> list[Hit]:
        if not self.active or len(hits) < 2 or not query.concepts:
            return hits
        head, tail = hits[: self.candidates], hits[self.candidates :]
        top = max(h.score for h in head)
        scale = 1.0 / top if top > 0 else 0.0
        scored = []
        for i, h in enumerate(head):
            cov, chunk = self.coverage(query, h)
            score = h.score * scale + self.weight * max(cov, 0.0)
            scored.append((-score, i, chunk, h))
        scored.sort(key=lambda t: (t[0], t[1]))
        out = [replace(h, chunk=chunk, score=-neg, rank=r) for r, (neg, _, chunk, h) in enumerate(scored, 1)]
        # Beyond the candidates the first stage's order stands, below every re-scored article.
        floor = min(h.score for h in out)
        for h in tail:
            out.append(replace(h, score=min(h.score * scale, floor), rank=len(out) + 1))
        return out
