"""The HTTP front (``knowgate serve``): a real router behind FastAPI's test client."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter
from knowgate.integrations.serving import MAX_BATCH, create_app
from knowgate.policy import build_policy
from knowgate.routing import Router

Q = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(smollm) -> TestClient:
    return TestClient(create_app(Router(smollm, build_policy("never"))))


def test_health_describes_the_router(client) -> None:
    body = client.get("/health").json()
    assert body == {
        "status": "ok",
        "model": "smollm2-135m",
        "policy": "never",
        "gate_mode": "pre",
        "knowledge_base": False,
        "experiment": None,
        "decision_log": False,
    }


def test_route_returns_the_same_trace_as_the_router(client, smollm) -> None:
    response = client.post("/route", json={"query": Q})
    assert response.status_code == 200
    body = response.json()
    direct = Router(smollm, build_policy("never")).route(Q)
    assert body["answer"] == direct.answer
    assert body["decision"]["retrieve"] is False
    assert body["calls"] == {"lm": 1, "retriever": 0}
    assert set(body) >= {"answer", "decision", "features", "passages", "calls", "timings_ms"}


def test_route_batch_answers_every_query_in_order(client) -> None:
    queries = [Q, "Who wrote Hamlet?"]
    body = client.post("/route_batch", json={"queries": queries}).json()
    assert [r["query"] for r in body] == queries


@pytest.mark.parametrize(
    ("path", "payload", "needle"),
    [
        ("/route", {"query": "   "}, "empty"),
        ("/route", {"query": "x" * 5000}, "4000"),
        ("/route", {"query": 42}, "string"),
        ("/route", {"query": Q, "threshold": 1.5}, "less than or equal"),
        ("/route", {"query": Q, "colour": "red"}, "extra"),
        ("/route_batch", {"queries": []}, "at least 1"),
        ("/route_batch", {"queries": [Q] * (MAX_BATCH + 1)}, f"at most {MAX_BATCH}"),
    ],
)
def test_bad_requests_get_422_with_the_reason(client, path, payload, needle) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == 422, response.text
    assert needle in response.text.lower()


def test_feedback_needs_a_decision_log(client) -> None:
    response = client.post("/feedback", json={"request_id": "r1", "correct": True})
    assert response.status_code == 503
    assert "decision log" in response.json()["error"]


def test_experiment_traffic_and_feedback_reach_the_log(smollm, tmp_path) -> None:
    exp = Experiment("always-vs-never", {"a": build_policy("always"), "b": build_policy("never")})
    with DecisionLog(tmp_path / "ab.sqlite") as log:
        api = TestClient(
            create_app(ExperimentRouter(Router(smollm, build_policy("never")), exp, log))
        )
        health = api.get("/health").json()
        assert health["experiment"] == "always-vs-never" and health["decision_log"] is True
        assert health["arms"] == {"a": "always", "b": "never"} and health["policy"] is None
        routed = api.post("/route", json={"query": Q, "unit_id": "user-7"}).json()
        arm = exp.assign("user-7").arm
        assert routed["extra"]["experiment"]["arm"] == arm
        assert routed["decision"]["policy"] == exp.arms[arm].policy_id
        assert routed["decision"]["retrieve"] is (arm == "a")
        request_id = routed["request_id"]
        ok = api.post("/feedback", json={"request_id": request_id, "correct": True, "score": 1})
        assert ok.status_code == 200 and ok.json() == {"recorded": 1}
        assert log.outcome_count() == 1
        missing = api.post("/feedback", json={"request_id": "nope", "correct": False})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        # A per-request threshold would change an arm's policy: refused, nothing logged.
        refused = api.post("/route", json={"query": Q, "unit_id": "u", "threshold": 0.3})
        assert refused.status_code == 422 and "threshold" in refused.json()["error"]
        assert log.count(exp.name) == 1


def test_serve_command_builds_the_app_and_runs_uvicorn(smollm, monkeypatch) -> None:
    import uvicorn
    from fastapi import FastAPI
    from typer.testing import CliRunner

    from knowgate.cli import app

    seen: dict = {}
    monkeypatch.setattr(
        "knowgate.cli.serve.load_router", lambda config: Router(smollm, build_policy("never"))
    )
    monkeypatch.setattr(uvicorn, "run", lambda api, **kwargs: seen.update(api=api, **kwargs))
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--threshold", "0.2"])
    assert result.exit_code == 0, result.output
    assert isinstance(seen["api"], FastAPI) and seen["port"] == 8123
    assert seen["host"] == "127.0.0.1"
    bad = CliRunner().invoke(app, ["serve", "--mode", "sideways"])
    assert bad.exit_code == 2 and "gate.mode" in bad.output
