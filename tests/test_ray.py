"""Ray scale-out on a local Ray instance: Ray Data index builds and Ray Serve replicas.

One local instance serves the whole module (2 CPUs, a 200 MB object store, loopback only, no
dashboard, no usage stats) and is shut down after it. Expected values come from the local path
(the same corpus built without Ray) and from the scripted router's rules, not from Ray.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.retrieval import Document, KnowledgeBase
from test_retrieval_support import TINY_DOCS

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A bounded local Ray instance; workers import knowgate and the test helpers from here."""
    paths = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray starts its workers at niceness 15; on a shared machine they would then wait
        # minutes for a core behind every other job. Keep them at the test's own priority.
        "RAY_worker_niceness": "0",
        # A busy machine (shared CI runners) can take longer than Serve's 5 s default to
        # import the proxy; a proxy declared dead and restarted only makes it slower.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "120",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield ray
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------------- Ray Data

CORPUS = [
    *TINY_DOCS,
    *(
        Document(f"note-{i}", f"Note {i}", f"Note {i}: the market sells {thing} on day {i}.")
        for i, thing in enumerate(["apples", "pears", "bread", "cheese", "tea", "rice"] * 2)
    ),
]
QUERIES = [
    "What is the capital of Germany?",
    "Which organ produces insulin?",
    "Who composed music in Salzburg?",
    "market selling cheese",
    "highest mountain",
]


def test_index_build_on_ray_matches_the_local_build(local_ray: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in CORPUS)
    )
    runner = CliRunner()
    local = runner.invoke(app, ["index", "build", str(corpus), "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    # Blocks of 5 passages over 2 actors: 4 blocks, finishing in any order.
    args = ["--ray", "--workers", "2", "--ray-block-size", "5", "--json"]
    remote = runner.invoke(
        app, ["index", "build", str(corpus), "--out", str(tmp_path / "ray"), *args]
    )
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["ray_workers"] == 2

    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray")]
    for m in manifests:
        del m["created_at"], m["updated_at"]
        del m["files"]["index.faiss"]  # vectors agree to rounding, not to the last bit
    assert manifests[0] == manifests[1]  # documents, BM25 files: byte-identical checksums

    kb_local, kb_ray = (KnowledgeBase.load(tmp_path / d) for d in ("local", "ray"))
    n = len(CORPUS)
    np.testing.assert_allclose(
        kb_ray._dense.index.reconstruct_n(0, n),
        kb_local._dense.index.reconstruct_n(0, n),
        atol=1e-5,
    )
    for mode in ("dense", "hybrid"):
        for query in QUERIES:
            ours = kb_ray.search(query, k=5, mode=mode)
            theirs = kb_local.search(query, k=5, mode=mode)
            assert [p.id for p in ours] == [p.id for p in theirs], (mode, query)
            np.testing.assert_allclose(
                [p.score for p in ours], [p.score for p in theirs], atol=1e-5
            )
    assert kb_ray.search("What is the capital of Germany?", k=1, mode="dense")[0].id == "berlin"


# ---------------------------------------------------------------------------------- Ray Serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_replicas_answer_http_and_batch_handle_calls(local_ray: Any) -> None:
    import httpx
    import ray.serve._private.api as serve_api
    from ray import serve

    from knowgate.integrations.ray.serving import RayServeConfig, run
    from knowgate.integrations.serving import ServingConfig
    from serving_helpers import ScriptedRouter

    # Serve waits a fixed 60 s for its HTTP proxy actor; on a loaded 2-core runner importing
    # the proxy alone can take longer (measured: 60-90 s at load average 17).
    serve_api.HTTP_PROXY_TIMEOUT = 300  # type: ignore[attr-defined]
    port = free_port()
    config = RayServeConfig(
        num_replicas=2, num_cpus=0.5, handle_batch_size=4, handle_batch_wait_s=0.5
    )
    handle = run(ScriptedRouter, ServingConfig(max_batch_size=4), config, port=port)
    try:
        status = serve.status().applications["knowgate"]
        assert status.status == "RUNNING"
        replicas = status.deployments["knowgate"].replica_states
        assert replicas.get("RUNNING") == 2

        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/health").json()
            assert health["model"] == "scripted-model" and health["status"] == "ok"
            routed = client.post("/route", json={"query": "q1", "threshold": 0.9}).json()
            assert routed["answer"] == "answer to q1"
            assert routed["decision"]["retrieve"] is True  # scripted: threshold > 0.5
            assert routed["serving"]["batch_size"] == 1
            chat = client.post(
                "/v1/chat/completions",
                json={"model": "knowgate", "messages": [{"role": "user", "content": "q2"}]},
            ).json()
            assert chat["choices"][0]["message"]["content"] == "answer to q2"
            error = client.post("/route", json={"query": "bad"})
            assert error.status_code == 422 and error.json()["error"]["type"]

        # Eight handle calls at once, thresholds alternating: Serve batches them per replica.
        thresholds = [0.9 if i % 2 else 0.1 for i in range(8)]
        responses = [
            handle.route.remote({"query": f"h{i}", "threshold": t, "unit_id": i})
            for i, t in enumerate(thresholds)
        ]
        results = [r.result(timeout_s=60) for r in responses]
        assert [r["answer"] for r in results] == [f"answer to h{i}" for i in range(8)]
        assert [r["decision"]["retrieve"] for r in results] == [t > 0.5 for t in thresholds]
        assert max(r["serving"]["batch_size"] for r in results) > 1
        assert all(r["serving"]["batch_size"] <= 4 for r in results)
    finally:
        serve.delete("knowgate")
        deadline = time.monotonic() + 30
        while "knowgate" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.2)


def test_serve_cli_builds_the_deployment_from_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`knowgate serve --ray` wiring, without a cluster: what reaches Serve, then a clean stop."""
    from contextlib import contextmanager

    from ray import serve

    import knowgate.integrations.ray as ray_pkg
    import knowgate.integrations.ray.serving as ray_serving

    calls: dict[str, Any] = {}

    @contextmanager
    def fake_runtime(runtime: Any) -> Iterator[Any]:
        calls["address"] = runtime.address
        yield ray

    def fake_run(factory: Any, serving: Any, config: Any, *, host: str, port: int) -> None:
        calls.update(factory=factory, serving=serving, config=config, host=host, port=port)

    def stop(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_pkg, "ray_runtime", fake_runtime)
    monkeypatch.setattr(ray_serving, "run", fake_run)
    monkeypatch.setattr(serve, "shutdown", lambda: calls.setdefault("shutdown", True))
    monkeypatch.setattr(time, "sleep", stop)
    config = tmp_path / "serve.yaml"
    config.write_text("autoscaling: {min_replicas: 1, max_replicas: 3}\nnum_cpus: 2\n")
    args = ["serve", "--ray", "--model", "smollm2-135m", "--ray-config", str(config)]
    result = CliRunner().invoke(app, [*args, "--port", "8123", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert calls["config"].autoscaling.max_replicas == 3 and calls["config"].num_cpus == 2
    assert calls["config"].deployment_options()["autoscaling_config"]["max_replicas"] == 3
    assert (calls["host"], calls["port"], calls["address"]) == ("127.0.0.1", 8123, None)
    assert calls["serving"].max_batch_size == 4
    assert calls["factory"].args[0].model.source == "smollm2-135m"  # built in each replica
    assert calls["shutdown"] is True

    replicas = CliRunner().invoke(app, [*args, "--replicas", "2"])
    assert replicas.exit_code == 0, replicas.output
    assert calls["config"].autoscaling is None
    assert calls["config"].deployment_options()["num_replicas"] == 2
