"""Per-query options of ``route_batch``: thresholds, request ids and answer streams.

They let requests from different callers share one batch (the HTTP server's micro-batches), so
each must come out exactly as if routed alone.
"""

from __future__ import annotations

import pytest

from knowgate.errors import InputError
from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import Router

DOCS = [
    Document(id="kg", title="knowgate", text="knowgate was released in 2026 by the knowgate team."),
    Document(id="paris", title="Paris", text="Paris is the capital and largest city of France."),
]
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "When was knowgate released?"]
FEATURE = "next_token_max_prob"


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.build(DOCS, progress=False)


@pytest.fixture(scope="module")
def router(smollm, kb) -> Router:
    gate = build_policy("threshold", feature=FEATURE, direction="higher_is_known", value=0.3)
    return Router(smollm, gate, kb)


def test_per_query_thresholds_match_routing_each_query_alone(router) -> None:
    p = router.route(QUESTIONS[0]).features[FEATURE]
    # Around the question's own signal: one threshold keeps it closed-book, one retrieves.
    thresholds = [max(0.0, p - 0.05), min(1.0, p + 0.05), None]
    queries = [QUESTIONS[0], QUESTIONS[0], QUESTIONS[2]]
    batched = router.route_batch(queries, thresholds=thresholds)
    for q, t, b in zip(queries, thresholds, batched, strict=True):
        alone = router.route(q, threshold=t)
        assert (b.answer, b.decision.retrieve) == (alone.answer, alone.decision.retrieve)
        assert b.decision.threshold == pytest.approx(alone.decision.threshold)
        assert [x.id for x in b.passages] == [x.id for x in alone.passages]
    assert [b.decision.retrieve for b in batched[:2]] == [False, True]


def test_request_ids_are_kept_and_checked(router) -> None:
    routed = router.route_batch(QUESTIONS[:2], request_ids=["req-a", "req-b"])
    assert [r.request_id for r in routed] == ["req-a", "req-b"]
    with pytest.raises(InputError, match="distinct"):
        router.route_batch(QUESTIONS[:2], request_ids=["same", "same"])
    with pytest.raises(InputError, match="one entry per query"):
        router.route_batch(QUESTIONS[:2], request_ids=["only-one"])
    with pytest.raises(InputError, match="non-empty"):
        router.route_batch(QUESTIONS[:1], request_ids=[" "])
    with pytest.raises(InputError, match="threshold or thresholds"):
        router.route_batch(QUESTIONS[:1], threshold=0.2, thresholds=[0.3])
    with pytest.raises(InputError, match="thresholds must be a list"):
        router.route_batch(QUESTIONS[:2], thresholds=[0.3])


def test_streams_carry_each_answer_closed_book_or_retrieved(router) -> None:
    pieces: dict[int, list[str]] = {0: [], 2: []}
    streams = [pieces[0].append, None, pieces[2].append]
    # QUESTIONS[0] stays closed-book below its signal; QUESTIONS[2] retrieves at threshold 1.
    p = router.route(QUESTIONS[0]).features[FEATURE]
    thresholds = [max(0.0, p - 0.05), None, 1.0]
    routed = router.route_batch(QUESTIONS, thresholds=thresholds, streams=streams)
    assert routed[0].decision.retrieve is False and routed[2].passages
    for i in (0, 2):
        assert "".join(pieces[i]) == routed[i].answer, i
    plain = router.route_batch(QUESTIONS, thresholds=thresholds)
    assert [r.answer for r in routed] == [r.answer for r in plain]


def test_experiment_router_logs_the_given_request_ids_and_refuses_thresholds(
    smollm, kb, tmp_path
) -> None:
    exp = Experiment("ids", {"a": build_policy("always"), "b": build_policy("never")})
    with DecisionLog(tmp_path / "ab.sqlite") as log:
        ab = ExperimentRouter(Router(smollm, build_policy("never"), kb), exp, log)
        routed = ab.route_batch(
            QUESTIONS[:2], unit_ids=["u1", "u2"], request_ids=["r-1", "r-2"], thresholds=None
        )
        assert [r.request_id for r in routed] == ["r-1", "r-2"]
        assert log.request("r-1")["unit_id"] == "u1" and log.request("r-2")["unit_id"] == "u2"
        with pytest.raises(InputError, match="threshold override"):
            ab.route_batch(QUESTIONS[:2], thresholds=[None, 0.4])
        assert log.count() == 2


def test_a_batch_mixing_signal_free_and_gated_policies_costs_what_each_costs_alone(
    router, smollm, monkeypatch
) -> None:
    gate = router.policy
    policies = [build_policy("always"), build_policy("never"), gate]
    alone = [router.route(q, policy=p) for q, p in zip(QUESTIONS, policies, strict=True)]
    prefilled: list[int] = []
    original = smollm.prefill

    def counting(prompts, **kwargs):
        prefilled.append(len(prompts))
        return original(prompts, **kwargs)

    monkeypatch.setattr(smollm, "prefill", counting)
    mixed = router.route_batch(QUESTIONS, policies=policies)
    for b, a in zip(mixed, alone, strict=True):
        assert (b.answer, b.decision.retrieve, b.calls) == (a.answer, a.decision.retrieve, a.calls)
        assert set(b.features) == set(a.features)
        assert set(b.timings_ms) == set(a.timings_ms)
    # always-retrieve spends no gate prefill, in a batch as alone: never and the gate do
    assert mixed[0].calls == {"lm": 1, "retriever": 1} and mixed[0].features == {}
    assert prefilled[0] == 2
