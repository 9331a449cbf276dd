"""Offline token estimates (no tokenizer download) and the price table for cost reports.

The estimate is deliberately a little pessimistic for GPT-style BPE vocabularies (cl100k and the like):
a Hangul syllable is about one token, often more; other non-space characters about 3.3 per token. It is used
for model routing (does the prompt fit the first model's context?) and for --dry-run cost estimates; the
final summary uses the token counts the server reports.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import yaml

from dnfbot.errors import InputError

HANGUL_TOKENS = 1.2  # tokens per Hangul syllable
OTHER_TOKENS = 0.3  # tokens per other non-space character
MESSAGE_OVERHEAD = 4  # role and separators per chat message
REPLY_OVERHEAD = 3

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_SPACE = re.compile(r"\s")


def estimate_tokens(text: str) -> int:
    hangul = len(_HANGUL.findall(text))
    other = len(text) - hangul - len(_SPACE.findall(text))
    return math.ceil(hangul * HANGUL_TOKENS + other * OTHER_TOKENS)


def estimate_prompt_tokens(messages: list[dict]) -> int:
    return REPLY_OVERHEAD + sum(MESSAGE_OVERHEAD + estimate_tokens(m["content"]) for m in messages)


class PriceTable:
    """USD per 1M input / output tokens by model name (exact name, else the longest listed prefix)."""

    def __init__(self, models: dict[str, dict]):
        self.models = models

    def lookup(self, model: str) -> dict | None:
        if model in self.models:
            return self.models[model]
        best = max((name for name in self.models if model.startswith(name)), key=len, default=None)
        return self.models[best] if best else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars, or None when the model has no listed price (a local server, say)."""
        price = self.lookup(model)
        if price is None:
            return None
        return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6


def _read_prices(text: str, source: str) -> dict[str, dict]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{source}: malformed YAML: {str(e).splitlines()[0]}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise InputError(f"{source}: expected a mapping 'models: {{name: {{input: $, output: $}}}}'")
    for name, p in models.items():
        ok = isinstance(p, dict) and all(isinstance(p.get(k), int | float) for k in ("input", "output"))
        if not ok:
            raise InputError(f"{source}: model '{name}' needs numeric 'input' and 'output' prices")
    return {str(k): {"input": float(v["input"]), "output": float(v["output"])} for k, v in models.items()}


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Packaged table, overlaid by $DNFBOT_HOME/prices.yaml when present, then by `path` when given."""
    from dnfbot.config import default_home
    from dnfbot.io import read_text

    text = resources.files("dnfbot").joinpath("data/prices.yaml").read_text(encoding="utf-8")
    models = _read_prices(text, "dnfbot/data/prices.yaml")
    home = default_home() / "prices.yaml"
    for extra in (home if home.exists() else None, path):
        if extra is not None:
            models.update(_read_prices(read_text(extra), str(extra)))
    return PriceTable(models)
