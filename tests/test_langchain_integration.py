"""The LangChain Runnable, the GatedRetriever and the example chain."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableLambda

from knowgate.errors import InputError
from knowgate.integrations.langchain import GatedRetriever, KnowgateRunnable, LocalChatModel
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import RoutedAnswer, Router

ROOT = Path(__file__).resolve().parents[1]
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
    runnable = router.as_runnable()
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
    runnable = Router(smollm, build_policy("never"), kb).as_runnable()
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
    inner = kb.as_retriever(k=2)
    knows = GatedRetriever(router=threshold_router(smollm, kb, 0.0), retriever=inner)
    events = Events()
    assert knows.invoke("What is the capital of France?", config={"callbacks": [events]}) == []
    assert events.events[0][1]["retrieve"] is False

    unsure = GatedRetriever.configurable_for(threshold_router(smollm, kb, 0.0), retriever=inner)
    docs = unsure.invoke("When was knowgate released?", config={"configurable": {"threshold": 1.0}})
    assert [d.metadata["id"] for d in docs][:1] == ["kg"] or docs[0].page_content.startswith(
        "knowgate"
    )
    assert all(d.metadata["knowgate_retrieve"] is True for d in docs)
    assert all("knowgate_policy" in d.metadata for d in docs)


def test_local_chat_model_renders_the_chat_template(smollm) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage

    llm = LocalChatModel(model=smollm)
    q = "What is the capital of France?"
    system = smollm.config.prompt.system_prompt
    msg = llm.invoke([SystemMessage(system), HumanMessage(q)])
    # Same messages as the router's closed-book prompt -> the same greedy answer.
    assert msg.content == smollm.ask(q).answer
    assert msg.response_metadata["model"] == "smollm2-135m"


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
