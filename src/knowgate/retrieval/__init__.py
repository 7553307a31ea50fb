"""Knowledge base: sentence-transformers embeddings + FAISS + BM25, persisted safely.

>>> kb = KnowledgeBase.build(["docs/"])                # doctest: +SKIP
>>> kb.save("kb/")                                      # doctest: +SKIP
>>> KnowledgeBase.load("kb/").search("how do I save a base?", k=3)  # doctest: +SKIP
"""

from knowgate.retrieval.config import (
    DEFAULT_EMBEDDING_MODEL,
    Bm25Config,
    HnswConfig,
    KnowledgeBaseConfig,
    SearchMode,
    SplitterConfig,
)
from knowgate.retrieval.corpus import IngestReport
from knowgate.retrieval.documents import Document, Passage
from knowgate.retrieval.knowledge_base import KnowledgeBase


def __getattr__(name: str) -> object:
    # The LangChain adapter is imported on demand, so plain use needs no langchain import.
    if name == "KnowledgeBaseRetriever":
        from knowgate.retrieval.langchain_retriever import KnowledgeBaseRetriever

        return KnowledgeBaseRetriever
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "Bm25Config",
    "Document",
    "HnswConfig",
    "IngestReport",
    "KnowledgeBase",
    "KnowledgeBaseConfig",
    "KnowledgeBaseRetriever",
    "Passage",
    "SearchMode",
    "SplitterConfig",
]
