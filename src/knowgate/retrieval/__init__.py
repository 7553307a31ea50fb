"""Knowledge base: sentence-transformers embeddings + FAISS + BM25, persisted safely.

>>> kb = KnowledgeBase.build(["docs/"])                # doctest: +SKIP
>>> kb.save("kb/")                                      # doctest: +SKIP
>>> KnowledgeBase.load("kb/").search("how do I save a base?", k=3)  # doctest: +SKIP

The LangChain retriever over a base lives with the other adapters:
:class:`knowgate.integrations.langchain.KnowledgeBaseRetriever`.
"""

from knowgate.retrieval.config import (
    DEFAULT_EMBEDDING_MODEL,
    Bm25Config,
    EmbeddingBackend,
    HnswConfig,
    IvfPqConfig,
    KnowledgeBaseConfig,
    SearchMode,
    SplitterConfig,
)
from knowgate.retrieval.corpus import IngestReport
from knowgate.retrieval.documents import Document, Passage
from knowgate.retrieval.knowledge_base import KnowledgeBase

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "Bm25Config",
    "Document",
    "EmbeddingBackend",
    "HnswConfig",
    "IngestReport",
    "IvfPqConfig",
    "KnowledgeBase",
    "KnowledgeBaseConfig",
    "Passage",
    "SearchMode",
    "SplitterConfig",
]
