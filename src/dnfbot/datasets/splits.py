"""The train/valid split: one rule for every dataset, and training honours what a file says.

- `assign_split(key, valid_fraction)`: 'valid' when sha256(key) falls in the first `valid_fraction` of the hash
  space. A record's split depends on its own key only, so adding data never moves old records, and the same key
  lands on the same side on every machine. The key is the article (`doc:{doc_id}`: chunks of one article never
  sit on both sides) or the normalised question.
- `train_valid(records, …)`: what the trainers (SFT, RM) use. A file written by `dnfbot data` carries a "split"
  on every record and is taken as it is — never re-split, even when no record is marked valid (then training runs
  without a validation set and says so). Records without any split field are split by `assign_split` here.
- `hold_out(items, n, seed)`: a fixed number of held-out items (PPO's before/after evaluation prompts).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dnfbot.errors import InputError

VALID_MARKS = ("valid", "validation", "test", "eval")
SPLIT_BY = ("doc", "question")
_NORM_DROP = re.compile(r"[\s\W_]+", re.U)


def hash01(key: str) -> float:
    """A stable number in [0, 1) for a key."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def assign_split(key: str, valid_fraction: float) -> str:
    """'valid' for a stable `valid_fraction` share of keys, else 'train' (independent of every other record)."""
    return "valid" if hash01(key) < valid_fraction else "train"


def normalize_question(q: str) -> str:
    """'안톤 레이드, 어떻게 가나요?' and '안톤레이드 어떻게 가나요' → the same key."""
    return _NORM_DROP.sub("", unicodedata.normalize("NFKC", q).lower())


def split_key(record: dict, split_by: str, question: str = "question") -> str:
    """The record's split key: its article ('doc', when it has a doc_id) or its normalised question."""
    if split_by == "doc" and record.get("doc_id"):
        return f"doc:{record['doc_id']}"
    return f"q:{normalize_question(str(record.get(question, '')))}"


def check_split_options(valid_fraction: float, split_by: str) -> None:
    if not 0 <= valid_fraction < 1:
        raise InputError(f"--valid-fraction {valid_fraction}: must be in [0, 1)")
    if split_by not in SPLIT_BY:
        raise InputError(f"--split-by {split_by}: choose 'doc' or 'question'")


def is_valid(record: dict) -> bool:
    return str(record.get("split", "")).lower() in VALID_MARKS


@dataclass
class Split:
    train: list[dict]
    valid: list[dict]
    how: str  # for the run summary: where the split came from

    @property
    def note(self) -> str | None:
        """A line worth printing: a file with splits but no validation record."""
        if self.how == "file" and not self.valid:
            return "no record is marked split=valid: training without a validation set"
        return None


def train_valid(records: list[dict], valid_fraction: float, question: str = "prompt") -> Split:
    """(train, valid) for a trainer: the file's own split when its records carry one, else `assign_split` by
    article (doc_id) or, without one, by question."""
    if any("split" in r for r in records):
        valid = [r for r in records if is_valid(r)]
        return Split([r for r in records if not is_valid(r)], valid, "file")
    if valid_fraction <= 0:
        return Split(list(records), [], "none")
    keys = [split_key(r, "doc", question) for r in records]
    sides = [assign_split(k, valid_fraction) for k in keys]
    return Split(
        [r for r, s in zip(records, sides, strict=True) if s == "train"],
        [r for r, s in zip(records, sides, strict=True) if s == "valid"],
        f"hash (valid_fraction {valid_fraction})",
    )


def hold_out(items: Sequence[Any], n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(rest, held out): `n` items (at most all but one) drawn with a seeded permutation. torch's permutation,
    so that runs keep the held-out prompts they had."""
    import torch

    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n = min(n, max(0, len(items) - 1))
    return [items[i] for i in order[n:]], [items[i] for i in order[:n]]
