"""Adapters that let the router take passages from a knowledge base or any LangChain retriever."""

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


def _score(value: Any) -> float | None:
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
                    score=_score(getattr(p, "score", None)),
                    rank=i,
                )
                for i, p in enumerate(hits[:k], start=1)
            ]
            for hits in results
        ]


class LangChainSource:
    """A LangChain ``BaseRetriever``: documents become passages (``id``/``title`` from metadata)."""

    def __init__(self, retriever: Any) -> None:
        """Wrap a LangChain retriever; its own ``k`` applies, then the router's ``k`` cuts."""
        self._retriever = retriever
        self.name = type(retriever).__name__

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[PassageTrace]]:
        """Invoke the retriever for each query (its ``batch`` runs them concurrently)."""
        batches = self._retriever.batch(list(queries))
        out = []
        for docs in batches:
            passages = []
            for i, doc in enumerate(docs[:k], start=1):
                meta = dict(doc.metadata or {})
                passages.append(
                    PassageTrace(
                        id=str(meta.get("id", doc.id or f"doc{i}")),
                        title=str(meta.get("title", "")),
                        text=doc.page_content,
                        score=_score(meta.get("score")),
                        rank=i,
                    )
                )
            out.append(passages)
        return out


def as_passage_source(retriever: Any, mode: str | None = None) -> PassageSource:
    """Adapt a knowledge base, a LangChain retriever or a searchable object."""
    from langchain_core.retrievers import BaseRetriever

    if isinstance(retriever, BaseRetriever):
        return LangChainSource(retriever)
    if hasattr(retriever, "search_batch") or hasattr(retriever, "search"):
        return SearchableSource(retriever, mode)
    if isinstance(retriever, PassageSource):
        return retriever
    raise ConfigError(
        f"cannot use {type(retriever).__name__} as a retriever: pass a knowgate KnowledgeBase, a "
        f"LangChain BaseRetriever, or an object with search(query, k)"
    )
