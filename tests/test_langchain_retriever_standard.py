"""LangChain's own standard retriever tests (langchain-tests, pinned in pyproject.toml)."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import RetrieversIntegrationTests

from knowgate.retrieval.langchain_retriever import KnowledgeBaseRetriever
from test_retrieval_support import tiny_kb


class TestKnowledgeBaseRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[KnowledgeBaseRetriever]:
        return KnowledgeBaseRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"knowledge_base": tiny_kb()}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"
