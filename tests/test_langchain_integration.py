"""The LangChain adapters: Runnable, GatedRetriever, passage source, generator, example chain."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda

from knowgate.errors import ConfigError, InputError
from knowgate.integrations.langchain import (
    GatedRetriever,
    KnowgateRunnable,
    KnowledgeBaseRetriever,
    LangChainGenerator,
    LangChainPassageSource,
    LocalChatModel,
)
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import GenerationRequest, PassageTrace, RoutedAnswer, Router

ROOT = Path(__file__).resolve().parents[1]
DOCS_Q = "When was knowgate released?"
DOCS = [
    Document(id="kg", title="knowgate", text="knowgate was released in 2026 by the knowgate team."),
    Document(id="paris", title="Paris", text="Paris is the capital and largest city of France."),
]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.build(DOCS, progress=False)


def threshold_router(smollm, kb, value: float) -> Router:
    policy = build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=value
    )
    return Router(smollm, policy, kb)


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def on_custom_event(self, name, data, **kwargs) -> None:
        self.events.append((name, data))


def test_runnable_invoke_batch_and_async(smollm, kb) -> None:
    router = Router(smollm, build_policy("never"), kb)
    runnable = KnowgateRunnable.configurable_for(router)
    q = "What is the capital of France?"
    expected = router.route(q).answer
    assert runnable.invoke(q) == expected
    assert runnable.invoke({"question": q}) == expected
    assert runnable.batch([q, {"question": q}]) == [expected, expected]
    assert asyncio.run(runnable.ainvoke(q)) == expected
    assert asyncio.run(runnable.abatch([q])) == [expected]
    routed = KnowgateRunnable(router=router, output="routed").invoke(q)
    assert isinstance(routed, RoutedAnswer) and routed.answer == expected
    chain = runnable | RunnableLambda(lambda s: s.upper())  # composes in LCEL
    assert chain.invoke(q) == expected.upper()


def test_runnable_rejects_bad_input(smollm, kb) -> None:
    runnable = KnowgateRunnable(router=Router(smollm, build_policy("never"), kb))
    with pytest.raises(InputError, match="no 'question' key"):
        runnable.invoke({"query": "x"})
    with pytest.raises(InputError, match="question string"):
        runnable.invoke(3.5)


def test_runnable_threshold_is_configurable_and_emits_events(smollm, kb) -> None:
    router = threshold_router(smollm, kb, 0.0)
    runnable = KnowgateRunnable.configurable_for(router, output="routed")
    q = "Who wrote Hamlet?"
    events = Events()
    default = runnable.invoke(q, config={"callbacks": [events]})
    assert default.decision.retrieve is False
    assert events.events and events.events[0][0] == "knowgate_decision"
    assert events.events[0][1]["retrieve"] is False
    strict = runnable.invoke(q, config={"configurable": {"threshold": 1.0}})
    assert strict.decision.retrieve is True and strict.decision.threshold == 1.0


def test_gated_retriever_returns_nothing_when_the_model_knows(smollm, kb) -> None:
    inner = KnowledgeBaseRetriever(knowledge_base=kb, k=2)
    knows = GatedRetriever(router=threshold_router(smollm, kb, 0.0), retriever=inner)
    events = Events()
    assert knows.invoke("What is the capital of France?", config={"callbacks": [events]}) == []
    assert events.events[0][1]["retrieve"] is False

    router = threshold_router(smollm, kb, 0.0)
    unsure = GatedRetriever.configurable_for(router, retriever=inner)
    q = "When was knowgate released?"
    docs = unsure.invoke(q, config={"configurable": {"threshold": 1.0}})
    # Retrieving, the gated retriever returns the inner retriever's documents, in its order:
    # both documents, the only one about knowgate first.
    assert [d.id for d in docs] == [d.id for d in inner.invoke(q)] == ["kg", "paris"]
    assert [d.page_content for d in docs] == [DOCS[0].text, DOCS[1].text]
    policy_id = router.policy.with_threshold(1.0).policy_id
    for d in docs:
        assert d.metadata["knowgate_retrieve"] is True
        assert d.metadata["knowgate_threshold"] == 1.0
        assert d.metadata["knowgate_policy"] == policy_id
        assert d.metadata["knowgate_p_known"] is None  # a raw-feature threshold has no p_known


def test_local_chat_model_renders_the_chat_template(smollm) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage

    llm = LocalChatModel(model=smollm)
    q = "What is the capital of France?"
    system = smollm.config.prompt.system_prompt
    msg = llm.invoke([SystemMessage(system), HumanMessage(q)])
    # Same messages as the router's closed-book prompt -> the same greedy answer.
    assert msg.content == smollm.ask(q).answer
    assert msg.response_metadata["model"] == "smollm2-135m"


def test_langchain_retrievers_feed_the_router_through_a_passage_source(smollm, kb) -> None:
    inner = KnowledgeBaseRetriever(knowledge_base=kb, k=2)
    with pytest.raises(ConfigError, match="LangChainPassageSource"):
        Router(smollm, build_policy("always"), inner)
    source = LangChainPassageSource(inner)
    q = "When was knowgate released?"
    hits = kb.search(q, k=2)
    (passages,) = source.retrieve([q], k=1)  # the router's k cuts the retriever's list
    assert passages == [PassageTrace("kg", "knowgate", DOCS[0].text, hits[0].score, 1)]
    routed = Router(smollm, build_policy("always"), source).route(q)
    assert [p.id for p in routed.passages] == [h.id for h in hits]
    assert routed.calls == {"lm": 1, "retriever": 1}
    with pytest.raises(ConfigError, match="BaseRetriever"):
        LangChainPassageSource(kb)  # type: ignore[arg-type]


def test_langchain_generator_sends_the_prompt_configs_messages(smollm, kb) -> None:
    fake = FakeListChatModel(responses=["closed-book answer", "answer with passages"])
    with pytest.raises(ConfigError, match="LangChainGenerator"):
        Router(smollm, build_policy("never"), kb, generator=fake)
    generator = LangChainGenerator(fake)
    prompt = smollm.config.prompt
    closed = Router(smollm, build_policy("never"), kb, generator=generator).route(DOCS_Q)
    assert closed.answer == "closed-book answer"
    assert closed.calls == {"lm": 1, "retriever": 0, "generator": 1}
    rag = Router(smollm, build_policy("always"), kb, generator=generator).route(DOCS_Q)
    assert rag.answer == "answer with passages" and rag.calls["generator"] == 1
    # The messages: the config's system prompt, then the question (after the passages).
    request = GenerationRequest(
        query="Q?",
        passages=(PassageTrace("kg", "knowgate", "released in 2026", None, 1),),
        system_prompt=prompt.rag_system_prompt,
        context="[1] knowgate: released in 2026",
    )
    assert LangChainGenerator.messages(request) == [
        SystemMessage(prompt.rag_system_prompt),
        HumanMessage("Context:\n[1] knowgate: released in 2026\n\nQuestion: Q?"),
    ]
    no_passages = GenerationRequest("Q?", (), prompt.system_prompt, "")
    assert LangChainGenerator.messages(no_passages) == [
        SystemMessage(prompt.system_prompt),
        HumanMessage("Q?"),
    ]


@pytest.mark.slow
def test_example_langchain_rag_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langchain_rag.py")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Q: ") == 2 and proc.stdout.count("A: ") == 2
    assert proc.stdout.count("gate: ") == 2
