"""The HTTP app's own behaviour: endpoints, the one error shape, limits, metrics, OpenAI shapes.

Most tests run on a scripted router (see serving_helpers.py), since they test what the server
adds; the real router behind real clients is in test_serving_live.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter
from knowgate.integrations.serving import MAX_BATCH, ErrorResponse, ServingConfig, create_app
from knowgate.policy import build_policy
from knowgate.routing import Router
from serving_helpers import ScriptedRouter

Q = "What is the capital of France?"
CHAT = "/v1/chat/completions"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@pytest.fixture()
def scripted() -> ScriptedRouter:
    return ScriptedRouter()


@pytest.fixture()
def client(scripted):
    with TestClient(create_app(scripted, config=ServingConfig(max_body_bytes=4096))) as c:
        yield c


def error_of(response) -> dict:
    """The error object, after checking the body is exactly the documented shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    ErrorResponse.model_validate(body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_health_is_liveness_and_ready_is_readiness(client) -> None:
    assert client.get("/health").json() == {
        "status": "ok",
        "model": "scripted-model",
        "policy": "scripted",
        "gate_mode": "pre",
        "knowledge_base": False,
        "experiment": None,
        "decision_log": False,
    }
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["queue"] == 0
    assert ready.json()["serving"]["max_body_bytes"] == 4096


def test_readiness_is_503_once_shutting_down(scripted) -> None:
    app = create_app(scripted)
    with TestClient(app) as c:
        assert c.get("/health/ready").status_code == 200
        c.portal.call(app.state.batcher.stop)
        response = c.get("/health/ready")
        assert response.status_code == 503 and error_of(response)["code"] == "shutting_down"
        refused = c.post("/route", json={"query": Q})
        assert refused.status_code == 503 and error_of(refused)["code"] == "shutting_down"
        assert c.get("/health").status_code == 200  # alive all the same


def test_route_returns_the_trace_with_its_request_id_and_the_servers_timings(
    client, scripted
) -> None:
    response = client.post("/route", json={"query": Q, "threshold": 0.9, "unit_id": "u"})
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == f"answer to {Q}" and body["decision"]["threshold"] == 0.9
    (call,) = scripted.calls
    assert call["request_ids"] == [body["request_id"]] and call["unit_ids"] == ["u"]
    assert response.headers["x-request-id"] == body["request_id"]
    assert response.headers["x-knowgate-retrieve"] == "true"
    assert set(body["serving"]) == {"queue_ms", "batch_ms", "batch_size"}
    assert body["serving"]["batch_size"] == 1


def test_route_batch_answers_every_query_in_order(client) -> None:
    queries = [Q, "Who wrote Hamlet?", "Who painted Guernica?"]
    body = client.post("/route_batch", json={"queries": queries, "unit_ids": [1, 2, 3]}).json()
    assert [r["query"] for r in body] == queries
    assert len({r["request_id"] for r in body}) == 3


BAD_REQUESTS = [
    # (path, raw body or JSON payload, status, code, words the message must contain)
    ("/route", b'{"query": ', 400, "invalid_json", ["not valid json"]),
    (CHAT, b'{"model": "knowgate", "messages": [', 400, "invalid_json", ["not valid json"]),
    ("/route", {"query": Q, "colour": "red"}, 422, "invalid_request", ["unknown field", "colour"]),
    ("/route", {"query": 42}, 422, "invalid_request", ["query", "valid string"]),
    ("/route", {}, 422, "invalid_request", ["query", "required"]),
    ("/route", {"query": Q, "threshold": 1.5}, 422, "invalid_request", ["threshold", "1"]),
    ("/route", {"query": Q, "timeout_s": -1}, 422, "invalid_request", ["timeout_s"]),
    ("/route_batch", {"queries": []}, 422, "invalid_request", ["queries", "at least 1"]),
    (
        "/route_batch",
        {"queries": ["q"] * (MAX_BATCH + 1)},
        422,
        "invalid_request",
        [f"at most {MAX_BATCH}"],
    ),
    ("/route_batch", {"queries": [Q, Q], "unit_ids": ["a"]}, 422, "invalid_request", ["unit_ids"]),
    (CHAT, {"model": "knowgate", "messages": []}, 400, "invalid_request", ["messages", "at least"]),
    (CHAT, {"messages": [user(Q)]}, 400, "invalid_request", ["model", "required"]),
    (
        CHAT,
        {"model": "knowgate", "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_request",
        ["messages.0.content"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [{"role": "wizard", "content": Q}]},
        400,
        "invalid_request",
        ["messages.0.role"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "best_of": 3},
        400,
        "invalid_request",
        ["unknown field", "best_of"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user("   ")]},
        400,
        "invalid_request",
        ["last user message is empty"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q), {"role": "assistant", "content": "Paris"}]},
        400,
        "invalid_request",
        ["last message must be the user's"],
    ),
    (
        CHAT,
        {
            "model": "knowgate",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "unsupported_parameter",
        ["image_url", "text only"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "n": 2},
        400,
        "unsupported_parameter",
        ["'n'"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "tools": [{"type": "function"}]},
        400,
        "unsupported_parameter",
        ["tools"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "logprobs": True},
        400,
        "unsupported_parameter",
        ["logprobs"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "response_format": {"type": "json_object"}},
        400,
        "unsupported_parameter",
        ["response_format"],
    ),
    (
        CHAT,
        {"model": "gpt-4o", "messages": [user(Q)]},
        404,
        "model_not_found",
        ["gpt-4o", "scripted-model"],
    ),
    (
        CHAT,
        {"model": "knowgate", "messages": [user(Q)], "knowgate": {"threshold": 2}},
        400,
        "invalid_request",
        ["knowgate.threshold"],
    ),
]


@pytest.mark.parametrize(
    ("path", "payload", "status", "code", "words"),
    BAD_REQUESTS,
    ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD_REQUESTS)],
)
def test_bad_requests_get_one_error_shape_with_the_reason(
    client, scripted, path, payload, status, code, words
) -> None:
    if isinstance(payload, bytes):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]
    assert scripted.calls == []  # refused before anything was routed


def test_error_types_follow_openai(client) -> None:
    assert error_of(client.post("/route", json={}))["type"] == "invalid_request_error"
    assert error_of(client.post(CHAT, json={"model": "x", "messages": [user(Q)]}))["type"] == (
        "not_found_error"
    )
    missing = client.post(CHAT, json={"model": "knowgate", "messages": []})
    assert error_of(missing)["param"] == "messages"


def test_oversized_bodies_are_refused_with_413_whether_declared_or_streamed(
    client, scripted
) -> None:
    big = json.dumps({"query": "x" * 5000}).encode()
    declared = client.post("/route", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    error = error_of(declared)
    assert error["code"] == "body_too_large" and "4096 bytes" in error["message"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    streamed = client.post("/route", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "body_too_large"
    openai = client.post(CHAT, content=big, headers={"content-type": "application/json"})
    assert openai.status_code == 413 and error_of(openai)["code"] == "body_too_large"
    assert scripted.calls == []


def test_unknown_endpoints_and_methods_get_the_same_shape(client) -> None:
    missing = client.get("/v2/everything")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    wrong = client.get("/route")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"


def test_feedback_without_a_decision_log_is_503(client) -> None:
    response = client.post("/feedback", json={"request_id": "r1", "correct": True})
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "no_decision_log" and "decision log" in error["message"]


def test_a_full_queue_gets_429_with_retry_after(scripted) -> None:
    app = create_app(scripted, config=ServingConfig(max_batch_size=1, max_queue=1, max_wait_ms=1))
    scripted.release.clear()
    with TestClient(app) as c:
        results: dict[str, object] = {}

        def send(name: str) -> None:
            results[name] = c.post("/route", json={"query": name})

        running = threading.Thread(target=send, args=("running",))
        running.start()
        assert scripted.entered.wait(10)
        queued = threading.Thread(target=send, args=("queued",))
        queued.start()
        deadline = time.monotonic() + 10
        while app.state.batcher.queue_depth < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for path, payload in (
            ("/route", {"query": "refused"}),
            (CHAT, {"model": "knowgate", "messages": [user("refused")]}),
            (CHAT, {"model": "knowgate", "messages": [user("refused")], "stream": True}),
        ):
            response = c.post(path, json=payload)
            assert response.status_code == 429, path
            assert error_of(response)["code"] == "queue_full"
            assert error_of(response)["type"] == "rate_limit_error"
            assert int(response.headers["retry-after"]) >= 1
        scripted.release.set()
        running.join(10)
        queued.join(10)
    assert [results[n].status_code for n in ("running", "queued")] == [200, 200]
    assert scripted.queries_routed() == ["running", "queued"]


def test_empty_and_oversized_queries_are_refused_by_the_real_router(smollm) -> None:
    with TestClient(create_app(Router(smollm, build_policy("never")))) as c:
        for query, words in (("   ", "empty"), ("x" * 5000, "4000")):
            response = c.post("/route", json={"query": query})
            assert response.status_code == 422
            error = error_of(response)
            assert error["code"] == "input_error" and words in error["message"]
        chat = c.post(CHAT, json={"model": "smollm2-135m", "messages": [user("y" * 5000)]})
        assert chat.status_code == 422 and "4000" in error_of(chat)["message"]


def test_experiment_traffic_and_feedback_reach_the_log(smollm, tmp_path) -> None:
    exp = Experiment("always-vs-never", {"a": build_policy("always"), "b": build_policy("never")})
    with DecisionLog(tmp_path / "ab.sqlite") as log:
        ab = ExperimentRouter(Router(smollm, build_policy("never")), exp, log)
        with TestClient(create_app(ab)) as api:
            health = api.get("/health").json()
            assert health["experiment"] == "always-vs-never" and health["decision_log"] is True
            assert health["arms"] == {"a": "always", "b": "never"} and health["policy"] is None
            routed = api.post("/route", json={"query": Q, "unit_id": "user-7"}).json()
            arm = exp.assign("user-7").arm
            assert routed["extra"]["experiment"]["arm"] == arm
            assert routed["decision"]["policy"] == exp.arms[arm].policy_id
            assert routed["decision"]["retrieve"] is (arm == "a")
            request_id = routed["request_id"]
            assert log.request(request_id)["unit_id"] == "user-7"
            ok = api.post("/feedback", json={"request_id": request_id, "correct": True})
            assert ok.status_code == 200 and ok.json() == {"recorded": 1}
            assert log.outcome_count() == 1
            missing = api.post("/feedback", json={"request_id": "nope", "correct": False})
            assert missing.status_code == 404 and "nope" in error_of(missing)["message"]
            # A per-request threshold would change an arm's policy: refused, nothing logged.
            refused = api.post("/route", json={"query": Q, "unit_id": "u", "threshold": 0.3})
            assert refused.status_code == 422
            assert error_of(refused)["code"] == "input_error"
            assert "threshold" in error_of(refused)["message"]
            assert log.count(exp.name) == 1


# ----------------------------------------------------------------------------------- OpenAI
def test_chat_completion_has_openais_shape_and_knowgates_trace(client, scripted) -> None:
    payload = {
        "model": "knowgate",
        "messages": [{"role": "system", "content": "Be brief."}, user(Q)],
        "temperature": 0.7,
        "max_tokens": 50,
        "user": "user-42",
        "knowgate": {"threshold": 0.9},
    }
    response = client.post(CHAT, json=payload)
    assert response.status_code == 200, response.text
    completion = ChatCompletion.model_validate(response.json())
    assert completion.choices[0].message.content == f"answer to {Q}"
    assert completion.model == "scripted-model"
    trace = response.json()["knowgate"]
    assert completion.id == f"chatcmpl-{trace['request_id']}"
    assert trace["decision"]["threshold"] == 0.9 and trace["decision"]["retrieve"] is True
    assert any("messages[0] (system)" in n for n in trace["notes"])
    assert any(n.startswith("temperature") for n in trace["notes"])
    assert any(n.startswith("max_tokens") for n in trace["notes"])
    (call,) = scripted.calls
    assert call["queries"] == [Q] and call["unit_ids"] == ["user-42"]
    assert call["thresholds"] == [0.9] and call["request_ids"] == [trace["request_id"]]
    assert response.headers["x-request-id"] == trace["request_id"]
    assert response.headers["x-knowgate-p-known"] == "0.500000"
    assert response.headers["x-knowgate-retrieve"] == "true"


def test_text_content_parts_are_joined_and_knowgate_unit_id_wins_over_user(
    client, scripted
) -> None:
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the capital?"}]
    payload = {
        "model": "scripted-model",
        "messages": [{"role": "user", "content": parts}],
        "user": "ignored",
        "knowgate": {"unit_id": "unit-7"},
    }
    assert client.post(CHAT, json=payload).status_code == 200
    assert scripted.calls[0]["queries"] == ["What is\nthe capital?"]
    assert scripted.calls[0]["unit_ids"] == ["unit-7"]


def test_chat_completion_streams_chunks_then_the_trace_then_done(client) -> None:
    payload = {"model": "knowgate", "messages": [user(Q)], "stream": True}
    with client.stream("POST", CHAT, json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-request-id"]
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]
    assert {c.id for c in chunks} == {f"chatcmpl-{request_id}"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == f"answer to {Q}"
    words = len(f"answer to {Q}".split(" "))
    assert len([c for c in chunks if c.choices[0].delta.content]) == words  # word by word
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    trace = json.loads(data[-2])["knowgate"]
    assert trace["request_id"] == request_id and trace["decision"]["policy"] == "scripted"


def test_models_lists_the_served_model_and_the_alias(client) -> None:
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["scripted-model", "knowgate"]
    assert client.get("/v1/models/knowgate").json()["id"] == "knowgate"
    missing = client.get("/v1/models/gpt-4o")
    assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"


# ---------------------------------------------------------------------------------- metrics
def samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_decisions_batches_and_errors(client, scripted) -> None:
    for t in (0.2, 0.9, 0.95):  # the scripted gate retrieves above 0.5
        assert client.post("/route", json={"query": Q, "threshold": t}).status_code == 200
    client.post("/route_batch", json={"queries": [Q, Q]})
    client.post("/route", json={"colour": 1})
    client.post("/route", content=b"{", headers={"content-type": "application/json"})
    got = samples(client)
    assert got[("knowgate_routed_requests_total", (("decision", "retrieve"),))] == 2
    assert got[("knowgate_routed_requests_total", (("decision", "closed_book"),))] == 3
    assert got[("knowgate_batch_size_count", ())] == len(scripted.calls) == 4
    assert got[("knowgate_batch_size_sum", ())] == 5
    assert got[("knowgate_p_known_count", ())] == 5
    assert got[("knowgate_stage_duration_seconds_count", (("stage", "queue"),))] == 4
    assert got[("knowgate_stage_duration_seconds_count", (("stage", "prefill"),))] == 5
    assert got[("knowgate_errors_total", (("code", "invalid_request"),))] == 1
    assert got[("knowgate_errors_total", (("code", "invalid_json"),))] == 1
    key = (("endpoint", "/route"), ("method", "POST"), ("status", "200"))
    assert got[("knowgate_http_requests_total", key)] == 3
    key = (("endpoint", "/route"), ("method", "POST"), ("status", "422"))
    assert got[("knowgate_http_requests_total", key)] == 1
    assert got[("knowgate_queue_depth", ())] == 0
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_serve_command_builds_the_app_with_the_options_and_runs_uvicorn(
    smollm, monkeypatch
) -> None:
    import uvicorn
    from fastapi import FastAPI
    from typer.testing import CliRunner

    from knowgate.cli import app

    seen: dict = {}
    monkeypatch.setattr(
        "knowgate.cli.serve.load_router", lambda config: Router(smollm, build_policy("never"))
    )
    monkeypatch.setattr(uvicorn, "run", lambda api, **kwargs: seen.update(api=api, **kwargs))
    args = ["serve", "--port", "8123", "--max-batch", "4", "--max-wait-ms", "2"]
    args += ["--max-queue", "9", "--max-body-bytes", "5000", "--timeout", "7"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert isinstance(seen["api"], FastAPI) and seen["port"] == 8123
    assert seen["host"] == "127.0.0.1" and seen["timeout_graceful_shutdown"] == 30
    settings = seen["api"].state.settings
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queue) == (4, 2, 9)
    assert (settings.max_body_bytes, settings.request_timeout_s) == (5000, 7)
    bad = CliRunner().invoke(app, ["serve", "--mode", "sideways"])
    assert bad.exit_code == 2 and "gate.mode" in bad.output
    bad = CliRunner().invoke(app, ["serve", "--max-batch", "0"])
    assert bad.exit_code == 2 and "max_batch_size" in bad.output
