"""A knowledge base as a LangChain ``BaseRetriever``, so it drops into any LCEL chain."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from knowgate.retrieval.config import SearchMode
from knowgate.retrieval.knowledge_base import KnowledgeBase


class KnowledgeBaseRetriever(BaseRetriever):
    """Retrieves passages from a :class:`KnowledgeBase`.

    Each LangChain document has the passage text as ``page_content``, the passage id as ``id``,
    and ``id``, ``title``, ``score``, ``rank`` (plus the passage's own metadata) as metadata.

    Attributes:
        knowledge_base: the base to search.
        k: passages per query; ``invoke(query, k=3)`` overrides it for one call.
        mode: ``dense``, ``bm25`` or ``hybrid``; ``None`` uses the base's configured mode.
            ``invoke(query, mode="bm25")`` overrides it for one call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    knowledge_base: KnowledgeBase
    k: int = Field(default=5, ge=1)
    mode: SearchMode | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: SearchMode | None = None,
        **kwargs: Any,
    ) -> list[LangChainDocument]:
        if kwargs:
            raise TypeError(f"unexpected retriever arguments: {', '.join(sorted(kwargs))}")
        passages = self.knowledge_base.search(
            query, k=self.k if k is None else k, mode=mode or self.mode
        )
        return [
            LangChainDocument(
                id=p.id,
                page_content=p.text,
                metadata={
                    **p.metadata,
                    "id": p.id,
                    "title": p.title,
                    "score": p.score,
                    "rank": p.rank,
                },
            )
            for p in passages
        ]
