"""Where the router's passages come from: a knowledge base, or any searchable object.

The router asks a :class:`PassageSource` for the top-k passages of a batch of queries. A
:class:`~knowgate.retrieval.KnowledgeBase` (or anything with ``search_batch``/``search``) is
adapted here; adapters for other libraries' retrievers live in :mod:`knowgate.integrations`
(LangChain: ``knowgate.integrations.langchain.LangChainPassageSource``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from knowgate.errors import ConfigError
from knowgate.routing.trace import PassageTrace


@runtime_checkable
class PassageSource(Protocol):
    """What the router needs from a retriever: top-k passages for a batch of queries."""

    name: str

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[PassageTrace]]:
        """Top-``k`` passages per query, best first."""
        ...


def finite_score(value: Any) -> float | None:
    """A retriever's score as a finite float, or ``None`` when it gives none (or NaN/inf)."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


class SearchableSource:
    """Anything with ``search_batch(queries, k)`` or ``search(query, k)`` (e.g. KnowledgeBase)."""

    def __init__(self, searchable: Any, mode: str | None = None) -> None:
        """Wrap ``searchable``; ``mode`` is passed on to knowledge bases that take one."""
        self._searchable = searchable
        self._mode = mode
        self.name = type(searchable).__name__

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[PassageTrace]]:
        """Search all queries (in one batch when the object supports it)."""
        kwargs = {"mode": self._mode} if self._mode else {}
        if hasattr(self._searchable, "search_batch"):
            results = self._searchable.search_batch(list(queries), k, **kwargs)
        else:
            results = [self._searchable.search(q, k, **kwargs) for q in queries]
        return [
            [
                PassageTrace(
                    id=str(p.id),
                    title=str(getattr(p, "title", "") or ""),
                    text=str(p.text),
                    score=finite_score(getattr(p, "score", None)),
                    rank=i,
                )
                for i, p in enumerate(hits[:k], start=1)
            ]
            for hits in results
        ]


def as_passage_source(retriever: Any, mode: str | None = None) -> PassageSource:
    """Adapt a knowledge base or a searchable object; a :class:`PassageSource` is used as is.

    Raises:
        ConfigError: the object is none of these (the message says how to adapt a LangChain
            retriever).
    """
    if isinstance(retriever, PassageSource):
        return retriever
    if hasattr(retriever, "search_batch") or hasattr(retriever, "search"):
        return SearchableSource(retriever, mode)
    raise ConfigError(
        f"cannot use {type(retriever).__name__} as a retriever: pass a knowgate KnowledgeBase, an "
        f"object with search(query, k), or a PassageSource; wrap a LangChain retriever in "
        f"knowgate.integrations.langchain.LangChainPassageSource"
    )
