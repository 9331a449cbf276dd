"""Parse and validate a synthesis reply: 질문 / 장문 / 중문 / 단문 separated by ###.

Rules: all four parts present once and non-empty, written in Korean; the long answer has 5 or more sentences,
the medium one at most 3, the short one exactly 1 — so that the three lengths really differ, which is what
`data rm` ranks. Sentences are counted with
Kiwi's sentence splitter (one instance, created on first use and shared). An invalid reply raises
InvalidReply with a one-line reason, which the job retries and finally writes to the rejects file.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

LABELS = {"질문": "question", "장문": "long", "중문": "medium", "단문": "short"}
KINDS = ("long", "medium", "short")
KOREAN_LABEL = {v: k for k, v in LABELS.items()}
MIN_LONG, MAX_MEDIUM, SHORT = 5, 3, 1
MIN_HANGUL_SHARE = 0.5  # of the letters in a part; game terms in Latin letters ("MP", "DPS") are fine

_SPLIT = re.compile(r"#{3,}")
# "질문: …", "**질문**: …", "질문 : …", "질문：…" — tolerant of markdown bold and full-width colons.
_PART = re.compile(r"^\s*[*_]*\s*(질문|장문|중문|단문)\s*[*_]*\s*[:：]\s*[*_]*\s*(.*?)\s*$", re.S)
_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")

_kiwi = None
_kiwi_lock = threading.Lock()


class InvalidReply(ValueError):
    """The reply does not follow the format; str(e) is the one-line reason."""


@dataclass
class QA:
    question: str
    long: str
    medium: str
    short: str

    def to_dict(self) -> dict:
        return {"question": self.question, "long": self.long, "medium": self.medium, "short": self.short}


def get_kiwi():
    """The shared Kiwi instance (loading its model takes a second or two, so only once per process)."""
    global _kiwi
    if _kiwi is None:
        with _kiwi_lock:
            if _kiwi is None:
                from kiwipiepy import Kiwi

                kiwi = Kiwi()
                # The first split loads more of the model (seconds, holding the GIL): do it here, not on
                # the job's first reply, where it would stall the event loop past request timeouts.
                kiwi.split_into_sents("준비합니다. 시작합니다.")
                _kiwi = kiwi
    return _kiwi


def is_korean(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    return sum(1 for c in letters if _HANGUL.match(c)) / len(letters) >= MIN_HANGUL_SHARE


def split_reply(reply: str) -> dict[str, str]:
    """Labelled parts of a reply; InvalidReply when one is missing, repeated, empty or unlabelled."""
    if not reply or not reply.strip():
        raise InvalidReply("empty reply")
    parts: dict[str, str] = {}
    for chunk in _SPLIT.split(reply):
        if not chunk.strip():
            continue  # "### 질문: …" style leaves an empty piece before the first label
        m = _PART.match(chunk)
        if not m:
            preview = " ".join(chunk.split())[:30]
            raise InvalidReply(f"part without a 질문/장문/중문/단문 label: '{preview}'")
        label, body = m.group(1), m.group(2).strip()
        if label in parts:
            raise InvalidReply(f"part '{label}' appears twice")
        parts[label] = body
    for label in LABELS:
        if label not in parts:
            raise InvalidReply(f"missing part '{label}' (parts must be separated by ###)")
        if not parts[label]:
            raise InvalidReply(f"empty part '{label}'")
    return {LABELS[k]: v for k, v in parts.items()}


def validate(qa: QA, *, long_sentences: int | None = None) -> QA:
    """Check language and sentence counts; returns qa unchanged or raises InvalidReply.

    long_sentences: Kiwi's count for qa.long when the caller has it already (saves splitting it twice)."""
    d = qa.to_dict()
    for name, text in d.items():
        if not text.strip():
            raise InvalidReply(f"empty part '{KOREAN_LABEL[name]}'")
        if not is_korean(text):
            raise InvalidReply(f"part '{KOREAN_LABEL[name]}' is not in Korean")
    texts = [qa.medium, qa.short] if long_sentences is not None else [qa.long, qa.medium, qa.short]
    counts = [len(s) for s in get_kiwi().split_into_sents(texts)]
    n_long = long_sentences if long_sentences is not None else counts.pop(0)
    n_medium, n_short = counts
    if n_long < MIN_LONG:
        raise InvalidReply(f"long answer has {n_long} sentences (needs {MIN_LONG} or more)")
    if n_medium > MAX_MEDIUM:
        raise InvalidReply(f"medium answer has {n_medium} sentences (needs {MAX_MEDIUM} or fewer)")
    if n_short != SHORT:
        raise InvalidReply(f"short answer has {n_short} sentences (needs exactly {SHORT})")
    return qa


def parse_reply(reply: str) -> QA:
    """Reply text → validated QA, or InvalidReply with the reason."""
    return validate(QA(**split_reply(reply)))


def serve_stdio() -> None:
    """Worker loop for dnfbot.synth.parse_pool: JSON lines {"i", "text"} in, {"i", "qa"|"invalid"} out.

    Ends when stdin closes (also when the parent process is killed)."""
    import json
    import signal
    import sys

    # Ctrl-C reaches the whole process group: let the parent handle it and close our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    get_kiwi()
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for raw in sys.stdin.buffer:
        req = json.loads(raw)
        try:
            res = {"i": req["i"], "qa": parse_reply(req["text"]).to_dict()}
        except InvalidReply as e:
            res = {"i": req["i"], "invalid": str(e)}
        except Exception as e:  # a bug, not a bad reply: reported to the parent, which stops
            res = {"i": req["i"], "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res, ensure_ascii=False).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    serve_stdio()
