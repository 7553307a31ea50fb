"""A live server on loopback (uvicorn in a thread) against real clients.

Disconnects and graceful shutdown run on the scripted router (they test the server); the
OpenAI SDK, LangChain's ChatOpenAI, micro-batching and the decision log run on the real router,
checked against the same router answering each query alone.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter
from knowgate.integrations.serving import ServingConfig, create_app
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import Router
from serving_helpers import ScriptedRouter, live_server

DOCS = [
    Document(id="kg", title="knowgate", text="knowgate was released in 2026 by the knowgate team."),
    Document(id="paris", title="Paris", text="Paris is the capital and largest city of France."),
    Document(id="hamlet", title="Hamlet", text="Hamlet is a tragedy written by Shakespeare."),
]
QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "When was knowgate released?",
    "Who painted Guernica?",
    "What is the largest planet?",
    "Who discovered penicillin?",
]
FEATURE = "next_token_max_prob"


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# ------------------------------------------------------------------------- server mechanics
def test_clients_leaving_mid_request_do_not_break_their_batch() -> None:
    scripted = ScriptedRouter()
    app = create_app(scripted, config=ServingConfig(max_batch_size=8, max_wait_ms=200))
    scripted.release.clear()
    with live_server(app) as (url, _):

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                post = lambda q: http.post("/route", json={"query": q})  # noqa: E731
                batch = [asyncio.ensure_future(post(q)) for q in ("stay-1", "leaver", "stay-2")]
                assert await asyncio.to_thread(scripted.entered.wait, 10)
                queued_leaver = asyncio.ensure_future(post("queued-leaver"))
                await asyncio.to_thread(wait_until, lambda: app.state.batcher.queue_depth == 1)
                batch[1].cancel()  # closes its connection while its batch runs
                queued_leaver.cancel()  # closes its connection while it waits in the queue
                await asyncio.to_thread(
                    wait_until, lambda: metric(url, "knowgate_client_disconnects_total") == 2
                )
                assert app.state.batcher.queue_depth == 0  # the queued one was dropped
                scripted.release.set()
                return [await batch[0], await batch[2]]

        stayers = asyncio.run(scenario())
        assert [r.status_code for r in stayers] == [200, 200]
        assert [r.json()["answer"] for r in stayers] == ["answer to stay-1", "answer to stay-2"]
        # The leaver's batch ran to the end with it; the queued leaver was never routed.
        assert sorted(scripted.queries_routed()) == ["leaver", "stay-1", "stay-2"]
        assert len(scripted.calls) == 1  # one batch
        follow_up = httpx.post(f"{url}/route", json={"query": "after"}, timeout=30)
        assert follow_up.status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests_before_closing_the_log() -> None:
    scripted = ScriptedRouter()
    events: list[str] = []
    app = create_app(
        scripted,
        config=ServingConfig(max_batch_size=2, max_wait_ms=50),
        close_on_shutdown=lambda: events.append(f"closed after {len(scripted.calls)} batches"),
    )
    scripted.release.clear()
    responses: dict[str, httpx.Response] = {}

    def send(url: str, query: str) -> None:
        responses[query] = httpx.post(f"{url}/route", json={"query": query}, timeout=60)

    with live_server(app) as (url, server):
        threads = [threading.Thread(target=send, args=(url, f"q{i}")) for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: app.state.batcher.running_batch == 2)
        wait_until(lambda: app.state.batcher.queue_depth == 2)
        server.should_exit = True  # what SIGTERM does
        time.sleep(0.3)
        assert events == []  # still serving the in-flight requests
        scripted.release.set()
        for t in threads:
            t.join(30)
        wait_until(lambda: events != [])
    assert {q: r.status_code for q, r in responses.items()} == {f"q{i}": 200 for i in range(4)}
    assert events == ["closed after 2 batches"]


# --------------------------------------------------------------------------- real router
@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.build(DOCS, progress=False)


@pytest.fixture(scope="module")
def gate():
    return build_policy("threshold", feature=FEATURE, direction="higher_is_known", value=0.3)


@pytest.mark.slow
def test_openai_sdk_and_chatopenai_use_the_server_as_a_gated_rag_model(smollm, kb, gate) -> None:
    import openai
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    router = Router(smollm, gate, kb)
    known, unknown = QUESTIONS[0], QUESTIONS[2]
    p = router.route(known).features[FEATURE]
    low = max(0.0, p - 0.05)  # below its signal: answered closed-book
    alone = {
        "known": router.route(known, threshold=low),
        "unknown": router.route(unknown, threshold=1.0),  # retrieves
    }
    assert alone["known"].decision.retrieve is False and alone["unknown"].passages
    with live_server(create_app(router)) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
        assert [m.id for m in client.models.list()] == ["smollm2-135m", "knowgate"]
        for name, question, threshold in (("known", known, low), ("unknown", unknown, 1.0)):
            raw = client.chat.completions.with_raw_response.create(
                model="knowgate",
                messages=[{"role": "user", "content": question}],
                extra_body={"knowgate": {"threshold": threshold}},
            )
            completion = raw.parse()
            assert completion.choices[0].message.content == alone[name].answer
            trace = completion.model_extra["knowgate"]
            assert trace["decision"]["retrieve"] is alone[name].decision.retrieve
            assert [x["id"] for x in trace["passages"]] == [x.id for x in alone[name].passages]
            assert raw.headers["x-knowgate-retrieve"] == str(trace["decision"]["retrieve"]).lower()
            assert raw.headers["x-request-id"] == trace["request_id"]
            stream = client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": question}],
                stream=True,
                extra_body={"knowgate": {"threshold": threshold}},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == alone[name].answer
            assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1
            last = chunks[-1].model_extra["knowgate"]
            assert last["decision"]["retrieve"] is alone[name].decision.retrieve
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": known}]
            )
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="knowgate", messages=[{"role": "user", "content": known}], n=2
            )
        assert refused.value.code == "unsupported_parameter" and "'n'" in refused.value.message

        default = router.route(known)  # ChatOpenAI sends no knowgate options: the policy's cut
        llm = ChatOpenAI(
            base_url=f"{url}/v1", api_key="not-needed", model="knowgate", max_retries=0
        )
        reply = llm.invoke([SystemMessage("Answer briefly."), HumanMessage(known)])
        assert reply.content == default.answer
        streamed = "".join(str(c.content) for c in llm.stream([HumanMessage(known)]))
        assert streamed == default.answer


@pytest.mark.slow
def test_micro_batched_requests_get_the_answers_they_get_alone(smollm, kb, gate) -> None:
    router = Router(smollm, gate, kb)
    signals = {q: router.route(q).features[FEATURE] for q in QUESTIONS}
    # Each request its own threshold: half just below their signal, half just above.
    thresholds = [
        max(0.0, signals[q] - 0.05) if i % 2 else min(1.0, signals[q] + 0.05)
        for i, q in enumerate(QUESTIONS)
    ]
    alone = [router.route(q, threshold=t) for q, t in zip(QUESTIONS, thresholds, strict=True)]
    assert {a.decision.retrieve for a in alone} == {True, False}
    config = ServingConfig(max_batch_size=8, max_wait_ms=2000)  # long enough to gather all
    with live_server(create_app(router, config=config)) as (url, _):

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=300) as http:
                return await asyncio.gather(
                    *(
                        http.post("/route", json={"query": q, "threshold": t, "unit_id": i})
                        for i, (q, t) in enumerate(zip(QUESTIONS, thresholds, strict=True))
                    )
                )

        responses = asyncio.run(send_all())
    bodies = [r.json() for r in responses]
    assert all(b["serving"]["batch_size"] == len(QUESTIONS) for b in bodies)  # one batch
    for body, solo in zip(bodies, alone, strict=True):
        assert body["answer"] == solo.answer
        assert body["decision"]["retrieve"] is solo.decision.retrieve
        assert body["decision"]["threshold"] == pytest.approx(solo.decision.threshold)
        assert [p["id"] for p in body["passages"]] == [p.id for p in solo.passages]
        assert body["features"][FEATURE] == pytest.approx(solo.features[FEATURE], abs=1e-4)
    assert len({b["request_id"] for b in bodies}) == len(QUESTIONS)


@pytest.mark.slow
def test_experiment_traffic_is_logged_once_per_request_and_flushed_at_shutdown(
    smollm, kb, gate, tmp_path
) -> None:
    exp = Experiment("rag-vs-gate", {"rag": build_policy("always"), "gate": gate}, salt="t")
    path = tmp_path / "ab.sqlite"
    ab = ExperimentRouter(Router(smollm, build_policy("never"), kb), exp, DecisionLog(path))
    units = [f"user-{i}" for i in range(len(QUESTIONS))]
    solo = Router(smollm, build_policy("never"), kb)
    expected = [
        solo.route(q, policy=exp.arms[exp.assign(u).arm])
        for q, u in zip(QUESTIONS, units, strict=True)
    ]
    app = create_app(
        ab, config=ServingConfig(max_batch_size=8, max_wait_ms=1000), close_on_shutdown=ab.close
    )
    responses: dict[int, httpx.Response] = {}

    def send(url: str, i: int) -> None:
        body = {"model": "knowgate", "messages": [{"role": "user", "content": QUESTIONS[i]}]}
        body["user"] = units[i]
        responses[i] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)

    with live_server(app) as (url, server):
        threads = [threading.Thread(target=send, args=(url, i)) for i in range(len(QUESTIONS))]
        for t in threads:
            t.start()
        wait_until(lambda: app.state.batcher.running_batch == len(QUESTIONS), timeout=60)
        server.should_exit = True  # shut down while every request is in flight
        for t in threads:
            t.join(300)
    assert ab.decision_log is not None and ab.decision_log._conn is None  # closed at shutdown
    with DecisionLog(path, create=False) as log:
        assert log.count(exp.name) == len(QUESTIONS)
        for i, want in enumerate(expected):
            assert responses[i].status_code == 200
            body = responses[i].json()
            assert body["choices"][0]["message"]["content"] == want.answer
            trace = body["knowgate"]
            assert trace["experiment"]["arm"] == exp.assign(units[i]).arm
            row = log.request(trace["request_id"])
            assert row["unit_id"] == units[i] and row["arm"] == trace["experiment"]["arm"]
            assert row["answer"] == want.answer
