from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Document:
    """One cleaned article. doc_id is the source's own key ("0".."267" for the guide corpus)."""

    doc_id: str
    title: str
    text: str
    category1: str | None = None
    category2: str | None = None
    category3: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
