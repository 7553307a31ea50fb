"""A complete LCEL RAG chain whose retriever is gated by knowgate.

The chain is the usual ``{context, question} | prompt | llm | parser``. The only change from a
plain RAG chain is the retriever: ``GatedRetriever`` returns no documents when the local model
knows the answer, so the LLM answers closed-book and the retriever is not called.

Runs offline: the knowledge base is built from the project's docs/ folder, and the LLM is the
local model itself (swap in any LangChain chat model, e.g. ChatOpenAI).

    python examples/langchain_rag.py [--docs docs] [--threshold 0.3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from knowgate import KnowledgeBase, Router, RouterConfig
from knowgate.integrations.langchain import GatedRetriever, KnowledgeBaseRetriever, LocalChatModel

QUESTIONS = [
    "What is the capital of France?",
    "Which knowgate command fits and calibrates a gating policy?",
]


class DecisionPrinter(BaseCallbackHandler):
    """Prints the gate's decision from the ``knowgate_decision`` custom event."""

    def on_custom_event(self, name, data, **kwargs) -> None:
        if name == "knowgate_decision":
            p = "n/a" if data["p_known"] is None else f"{data['p_known']:.3f}"
            verdict = "retrieve" if data["retrieve"] else "closed-book"
            print(f"  gate: {verdict} (p_known {p}, threshold {data['threshold']})")


def format_docs(docs) -> str:
    if not docs:
        return "(none: the model knows this one)"
    return "\n".join(
        f"[{i}] {d.metadata.get('title', '')}: {d.page_content}"
        for i, d in enumerate(docs, start=1)
    )


def build_chain(router: Router, kb: KnowledgeBase):
    inner = KnowledgeBaseRetriever(knowledge_base=kb, k=2)  # or any LangChain retriever
    gated = GatedRetriever.configurable_for(router, retriever=inner)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer with a short phrase. Use the context if it helps."),
            ("human", "Context:\n{context}\n\nQuestion: {question}"),
        ]
    )
    llm = LocalChatModel(model=router.model)
    return (
        {"context": gated | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(argv)

    kb = KnowledgeBase.build([args.docs], progress=False)
    router = Router.from_config(RouterConfig(), retriever=kb)  # default model + bundled policy
    chain = build_chain(router, kb)
    config = {"callbacks": [DecisionPrinter()]}
    if args.threshold is not None:
        config["configurable"] = {"threshold": args.threshold}
    answers = []
    for question in QUESTIONS:
        print(f"Q: {question}")
        answer = chain.invoke(question, config=config)
        print(f"A: {answer}")
        answers.append(answer)
    return answers


if __name__ == "__main__":
    main()
