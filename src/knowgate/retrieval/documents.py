"""The two records of a knowledge base: what goes in (documents) and what comes out (passages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from knowgate.errors import DataError


@dataclass(frozen=True)
class Document:
    """One passage of a corpus, as stored in a knowledge base.

    Attributes:
        id: unique within the base (corpus ids are kept; file chunks get ``path#n``).
        title: the article, file or section the text belongs to; embedded with the text.
        text: the passage itself.
        metadata: string facts about the passage (source file, section); kept, never searched.
    """

    id: str
    title: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"document id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.title, str):
            raise DataError(f"document {self.id!r}: title must be a string")
        if not isinstance(self.text, str):
            raise DataError(f"document {self.id!r}: text must be a string")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``documents.jsonl``."""
        data: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        return data


@dataclass(frozen=True)
class Passage:
    """One search result.

    Attributes:
        id: the document id.
        title: the document title.
        text: the document text.
        score: higher is better; its scale depends on the mode (cosine similarity for ``dense``,
            BM25 score for ``bm25``, reciprocal-rank-fusion score for ``hybrid``).
        rank: 1-based position in the result list.
        metadata: the document's metadata.
    """

    id: str
    title: str
    text: str
    score: float
    rank: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """``{id, title, text, score}``: the shape of ``knowgate index search --json``."""
        return {"id": self.id, "title": self.title, "text": self.text, "score": self.score}
