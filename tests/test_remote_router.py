"""The router driving a served model (fake OpenAI-compatible server): one draft gates.

Known query: one call (the draft is the answer). Unknown: the draft, retrieval, and a second call
with the passages. Signal-free policies decide first (always = plain RAG, one call). Policies
reading features a server cannot provide are refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import httpx
import pytest

from knowgate.config import RouterConfig
from knowgate.errors import ConfigError, PolicyError, RemoteUnavailableError
from knowgate.policy import build_policy
from knowgate.routing import GenerationRequest, Router
from remote_helpers import FakeServer, completion, token

KNOWN = "What is the capital of France?"
UNKNOWN = "When was knowgate released?"


@dataclass
class Doc:
    id: str
    title: str
    text: str
    score: float = 1.0


class Retriever:
    def __init__(self) -> None:
        self.calls = 0

    def search(self, query: str, k: int = 3):
        self.calls += 1
        return [Doc("kg", "knowgate", "knowgate was released in 2026.")][:k]


class RagAwareServer(FakeServer):
    """Answers RAG calls (messages with a context) with "2026", closed-book ones by question."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        if body and "Context:" in body["messages"][-1]["content"]:
            self.requests.append((request.method, request.url.path, body, dict(request.headers)))
            return httpx.Response(200, json=completion("2026", None))
        return super().handler(request)


def rag_server() -> RagAwareServer:
    return RagAwareServer(
        replies={
            KNOWN: completion("Paris", [token("Paris", math.log(0.9), [math.log(0.05)])]),
            UNKNOWN: completion("1999", [token("1999", math.log(0.2), [math.log(0.15)])]),
        }
    )


def min_prob_policy(value: float):
    return build_policy(
        "threshold", feature="draft_min_prob", direction="higher_is_known", value=value
    )


def test_known_query_is_one_call_and_the_draft_is_the_answer() -> None:
    fake = rag_server()
    retriever = Retriever()
    router = Router(fake.model(), min_prob_policy(0.5), retriever)
    routed = router.route(KNOWN)
    assert routed.decision.retrieve is False and routed.decision.mode == "draft"
    assert routed.answer == "Paris"
    assert routed.calls == {"lm": 1, "retriever": 0} and retriever.calls == 0
    assert routed.features["draft_min_prob"] == pytest.approx(0.9)
    assert len(fake.chat_bodies()) == 1 and fake.chat_bodies()[0]["logprobs"] is True
    assert {"draft", "signals", "policy", "total"} <= set(routed.timings_ms)


def test_unknown_query_retrieves_and_asks_again_with_the_passages() -> None:
    fake = rag_server()
    retriever = Retriever()
    router = Router(fake.model(), min_prob_policy(0.5), retriever)
    routed = router.route(UNKNOWN)
    assert routed.decision.retrieve is True
    assert routed.answer == "2026" and [p.id for p in routed.passages] == ["kg"]
    assert routed.calls == {"lm": 2, "retriever": 1}
    draft_call, rag_call = fake.chat_bodies()
    assert draft_call["logprobs"] is True and "logprobs" not in rag_call
    assert "knowgate was released in 2026." in rag_call["messages"][-1]["content"]
    assert {"draft", "retrieve", "answer_with_passages"} <= set(routed.timings_ms)


def test_batch_routes_each_query_and_threshold_overrides() -> None:
    fake = rag_server()
    router = Router(fake.model(), min_prob_policy(0.5), Retriever())
    known, unknown = router.route_batch([KNOWN, UNKNOWN])
    assert (known.decision.retrieve, unknown.decision.retrieve) == (False, True)
    # per-request threshold above the known draft's min prob: it retrieves too
    assert router.route(KNOWN, threshold=0.95).decision.retrieve is True


def test_signal_free_policies_decide_before_any_call() -> None:
    fake = rag_server()
    retriever = Retriever()
    router = Router(fake.model(), build_policy("always"), retriever)
    routed = router.route(UNKNOWN)
    assert routed.calls == {"lm": 1, "retriever": 1}  # plain RAG: no draft
    assert [("logprobs" in b) for b in fake.chat_bodies()] == [False]
    assert "draft" not in routed.timings_ms
    never = Router(fake.model(), build_policy("never"), retriever).route(KNOWN)
    assert never.answer == "Paris" and never.calls == {"lm": 1, "retriever": 0}


def test_retrieval_failure_falls_back_to_the_draft() -> None:
    fake = rag_server()
    router = Router(fake.model(), min_prob_policy(0.5), retriever=None)
    routed = router.route(UNKNOWN)
    assert routed.answer == "1999" and routed.retrieval_error is not None
    assert routed.calls == {"lm": 1, "retriever": 0}
    # always-retrieve with no retriever: one closed-book draft call answers
    plain = Router(fake.model(), build_policy("always"), retriever=None).route(KNOWN)
    assert plain.answer == "Paris" and plain.calls == {"lm": 1, "retriever": 0}


def test_policy_reading_features_a_server_cannot_give_is_refused_by_name() -> None:
    fake = rag_server()
    entropy = build_policy(
        "threshold", feature="draft_mean_entropy", direction="lower_is_known", value=1.0
    )
    with pytest.raises(ConfigError, match=r"needs \['draft_mean_entropy'\].*does not provide"):
        Router(fake.model(), entropy, Retriever())
    sparsity = build_policy(
        "threshold", feature="hidden_hoyer_last", direction="lower_is_known", value=0.3
    )
    with pytest.raises(ConfigError, match="hidden_hoyer_last"):
        Router(fake.model(), sparsity, Retriever())
    # hidden-state sparsity is available only when asked of the server
    served_hidden = build_policy(
        "threshold", feature="served_hidden_hoyer", direction="lower_is_known", value=0.3
    )
    with pytest.raises(ConfigError, match="served_hidden_hoyer"):
        Router(fake.model(), served_hidden, Retriever())
    Router(fake.model(hidden_states=True), served_hidden, Retriever())


def test_served_only_features_are_refused_for_a_local_model() -> None:
    from knowgate.models import ModelConfig

    class LocalStub:  # only what Router.__init__ and check_policy read
        model_id = "local-stub"
        config = ModelConfig()

    policy = build_policy(
        "threshold", feature="draft_mean_topk_entropy", direction="lower_is_known", value=1.0
    )
    config = RouterConfig(gate={"mode": "draft"})
    with pytest.raises(ConfigError, match="only a served model provides"):
        Router(LocalStub(), policy, config=config)  # type: ignore[arg-type]


def test_policy_fitted_for_another_model_is_refused() -> None:
    fake = rag_server()
    policy = min_prob_policy(0.5)
    foreign = policy.__class__(**{**policy.params(), "model_id": "smollm2-135m"})
    with pytest.raises(PolicyError, match="fitted for model 'smollm2-135m'"):
        Router(fake.model(), foreign, Retriever())


def test_empty_draft_retrieves_with_a_reason() -> None:
    fake = FakeServer(default=completion("", []))
    routed = Router(fake.model(), min_prob_policy(0.5), Retriever()).route("q?")
    assert routed.decision.retrieve is True
    assert "scored no token" in routed.decision.reason


def test_gate_only_and_generator() -> None:
    fake = rag_server()
    router = Router(fake.model(), min_prob_policy(0.5), Retriever())
    gated = router.gate(UNKNOWN)
    assert gated.decision.retrieve is True and "draft_min_prob" in gated.features
    assert router.describe()["gate_mode"] == "draft"

    class Writer:
        def __init__(self) -> None:
            self.requests: list[GenerationRequest] = []

        def answer(self, request: GenerationRequest) -> str:
            self.requests.append(request)
            return f"written: {len(request.passages)} passages"

    writer = Writer()
    router = Router(fake.model(), min_prob_policy(0.5), Retriever(), generator=writer)
    known, unknown = router.route_batch([KNOWN, UNKNOWN])
    assert known.answer == "written: 0 passages" and unknown.answer == "written: 1 passages"
    assert known.calls == {"lm": 1, "retriever": 0, "generator": 1}


def test_server_failure_surfaces_as_a_clear_error() -> None:
    fake = FakeServer(default=httpx.Response(503, text="overloaded"))
    router = Router(fake.model(max_retries=1), min_prob_policy(0.5), Retriever())
    with pytest.raises(RemoteUnavailableError, match="503"):
        router.route(KNOWN)


def test_from_config_builds_a_served_router() -> None:
    fake = rag_server()
    model = fake.model()
    config = RouterConfig(
        model={"source": model.config.source},
        policy={
            "name": "threshold",
            "params": {"feature": "draft_min_prob", "direction": "higher_is_known", "value": 0.5},
        },
    )
    router = Router.from_config(config, model=model, retriever=Retriever())
    assert router.mode == "draft" and router.route(KNOWN).answer == "Paris"


def test_http_app_answers_an_unavailable_server_with_503() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from knowgate.integrations.serving import create_app

    down = FakeServer(default=httpx.Response(503, text="overloaded"))
    app = create_app(Router(down.model(max_retries=0), min_prob_policy(0.5), Retriever()))
    response = TestClient(app).post("/route", json={"query": KNOWN})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "remote_unavailable_error"
    garbled = FakeServer(default=completion("Paris", None))
    app = create_app(Router(garbled.model(), min_prob_policy(0.5), Retriever()))
    response = TestClient(app).post("/route", json={"query": KNOWN})
    assert response.status_code == 502
    assert "no logprobs" in response.json()["error"]["message"]
