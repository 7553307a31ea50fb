"""The knowledge base as a LangChain retriever: its behaviour, and LangChain's standard tests."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from knowgate.integrations.langchain import KnowledgeBaseRetriever
from knowgate.retrieval import KnowledgeBase
from test_retrieval_support import TINY_DOCS, tiny_kb


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return tiny_kb()


def test_retriever_returns_langchain_documents(kb: KnowledgeBase) -> None:
    retriever = KnowledgeBaseRetriever(knowledge_base=kb, k=2)
    docs = retriever.invoke("What is the capital of France?")
    assert len(docs) == 2
    assert docs[0].id == "paris" and docs[0].metadata["title"] == "Paris"
    assert docs[0].page_content == TINY_DOCS[0].text
    assert len(retriever.invoke("capital", k=4)) == 4
    bm25_docs = retriever.invoke("Salzburg", mode="bm25")
    assert [d.id for d in bm25_docs] == ["mozart"]
    with pytest.raises(TypeError, match="unexpected retriever arguments"):
        retriever.invoke("x", top_k=3)


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
