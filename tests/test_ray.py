"""Ray scale-out on a local Ray instance: index builds, Serve replicas, branch batches in actors.

One local instance serves the whole module (2 CPUs, a 200 MB object store, loopback only, no
dashboard, no usage stats) and is shut down after it. Expected values come from the local path
(the same corpus built, the same questions answered without Ray) and from the scripted router's
rules, not from Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


# ------------------------------------------------------- calibrate --ray and bench --ray

QUESTIONS = [
    ("c1", "What is the capital of France?", ["Paris"]),
    ("c2", "What is the capital of Germany?", ["Berlin"]),
    ("c3", "Which planet is the largest in the Solar System?", ["Jupiter"]),
    ("c4", "What is the highest mountain on Earth?", ["Mount Everest", "Everest"]),
    ("c5", "Who created the Python programming language?", ["Guido van Rossum"]),
    ("c6", "In which year was the Python programming language created?", ["1991"]),
    ("c7", "In which city was Wolfgang Amadeus Mozart born?", ["Salzburg"]),
    ("c8", "Which organ of the body makes insulin?", ["pancreas"]),
    ("c9", "What is the capital of Italy?", ["Rome"]),
    ("c10", "Who wrote Romeo and Juliet?", ["William Shakespeare", "Shakespeare"]),
    ("c11", "In which year was the Eiffel Tower completed?", ["1889"]),
    ("c12", "Who was the first prime minister of Australia?", ["Edmund Barton"]),
    ("c13", "What is the capital of Burkina Faso?", ["Ouagadougou"]),
    ("c14", "Which gas do plants give off in photosynthesis?", ["oxygen"]),
    ("c15", "What is the capital of Mongolia?", ["Ulaanbaatar", "Ulan Bator"]),
    ("c16", "Who painted the Mona Lisa?", ["Leonardo da Vinci", "Leonardo"]),
]
"""Questions a 135M model partly knows closed-book; the tiny corpus answers the first eight."""
BATCH = 4  # local batches c1-4, c5-8, c9-12, c13-16


@dataclass
class BatchRuns:
    """The same questions answered locally and on two Ray actors (see :func:`batch_runs`)."""

    root: Path
    local: list[Any]
    on_ray: list[Any]
    resumed: list[Any]
    resumed_questions: int
    partial_lines: list[bytes]
    rag_local: list[Any]
    rag_on_ray: list[Any]
    bench_rows: int
    bench_retimed: list[str]
    stats: Any


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qa") / "tiny_qa.jsonl"
    rows = [{"id": i, "question": q, "golden_answers": a} for i, q, a in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def interrupted_copy(done: Path, target: Path, rows: int, *, torn: bool) -> list[bytes]:
    """A copy of a finished cache cut after ``rows`` rows (and a torn next line); its lines."""
    lines = done.read_bytes().splitlines(keepends=True)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"".join(lines[: rows + 1]) + (lines[rows + 1][:40] if torn else b""))
    shutil.copytree(f"{done}.arrays", f"{target}.arrays")
    return lines[: rows + 1]


@pytest.fixture(scope="module")
def batch_runs(
    local_ray: Any, smollm: Any, qa_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> BatchRuns:
    """Closed-book and retrieval caches written locally and on Ray, and a resumed cache.

    One pair of actors answers everything here and is stopped before the tests read anything
    (the CLI test starts its own).
    """
    from knowgate.evaluation.bench.runner import run_branches
    from knowgate.evaluation.branches.closed_book import closed_book_cache_path, run_closed_book
    from knowgate.evaluation.branches.retrieval import RetrievalBranch, run_retrieval_branch
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.integrations.ray.batch import BatchStats, RayBatchConfig, RayBatchRunner

    root = tmp_path_factory.mktemp("batches")
    ds = load_dataset(qa_file)
    local = run_closed_book(smollm, ds, cache_dir=root / "local", batch_size=BATCH, progress=False)
    done = closed_book_cache_path(smollm, ds, root / "local")
    # Interrupted while writing the third batch: nine whole rows, then a torn line.
    partial = interrupted_copy(
        done, closed_book_cache_path(smollm, ds, root / "partial"), 9, torn=True
    )

    kb_dir = root / "kb"
    KnowledgeBase.build(list(CORPUS), progress=False).save(kb_dir)
    first8, first4 = ds.head(8), ds.head(4)
    rag_local = run_retrieval_branch(
        smollm,
        first4,
        KnowledgeBase.load(kb_dir),
        knowledge_base_dir=kb_dir,
        k=2,
        cache_dir=root / "rag-local",
        batch_size=BATCH,
        progress=False,
    )

    stats = BatchStats()
    with RayBatchRunner(smollm.config, RayBatchConfig(workers=2), stats) as runner:
        on_ray = run_closed_book(
            smollm,
            first8,
            cache_dir=root / "ray",
            batch_size=BATCH,
            progress=False,
            executor=runner,
        )
        answered = stats.questions
        resumed = run_closed_book(
            smollm,
            ds,
            cache_dir=root / "partial",
            batch_size=BATCH,
            progress=False,
            executor=runner,
        )
        resumed_questions = stats.questions - answered
        # As `knowgate bench --ray` runs it: the closed-book cache is complete, the retrieval
        # branch runs on the actors.
        table, _, timings = run_branches(
            smollm,
            [first4],
            KnowledgeBase.load(kb_dir),
            knowledge_base_dir=kb_dir,
            k=2,
            closed_book_cache=root / "ray",
            retrieval_cache=root / "rag-ray",
            batch_size=BATCH,
            timing_sample=0,
            peers=False,
            progress=False,
            executor=runner,
        )
    rag_path = RetrievalBranch(
        smollm, KnowledgeBase.load(kb_dir), knowledge_base_dir=kb_dir, k=2
    ).cache_path(first4, root / "rag-ray")
    return BatchRuns(
        root=root,
        local=local,
        on_ray=on_ray,
        resumed=resumed,
        resumed_questions=resumed_questions,
        partial_lines=partial,
        rag_local=rag_local,
        rag_on_ray=RetrievalBranch.load(rag_path, first4),
        bench_rows=table.n,
        bench_retimed=sorted(timings),
        stats=stats,
    )


def _rows(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from knowgate.evaluation.branches.cache import read_cache

    header, rows, _ = read_cache(path)
    header.pop("created")
    return header, rows


def test_closed_book_cache_on_ray_is_the_local_cache(batch_runs: BatchRuns, qa_file: Path) -> None:
    from knowgate.evaluation.branches.cache import arrays_dir
    from knowgate.evaluation.branches.closed_book import load_closed_book_arrays
    from knowgate.evaluation.datasets import load_dataset

    runs = batch_runs
    # Closed-book: c1-8 (two batches), the resume's c10-16 (4 + 3); retrieval: c1-4 (one).
    assert runs.stats.workers == 2
    assert (runs.stats.questions, runs.stats.batches) == (8 + 7 + 4, 2 + 2 + 1)
    assert len(runs.stats.actor_peak_rss_mib) == 2 and min(runs.stats.actor_peak_rss_mib) > 100
    [local_path] = (runs.root / "local").rglob("*.jsonl")
    [ray_path] = (runs.root / "ray").rglob("*.jsonl")
    assert ray_path.relative_to(runs.root / "ray") == local_path.relative_to(runs.root / "local")
    local_header, local_rows = _rows(local_path)
    ray_header, ray_rows = _rows(ray_path)
    assert ray_header == local_header
    assert list(ray_rows) == [q[0] for q in QUESTIONS[:8]]  # written in the local order
    for qid, row in ray_rows.items():
        theirs = local_rows[qid]
        for key in ("answer", "stop_reason", "prompt_tokens", "batch_size", "_arrays"):
            assert row[key] == theirs[key], (qid, key)
        assert row["features"] == pytest.approx(theirs["features"], rel=1e-3, abs=1e-5)
    assert [r.correct for r in runs.on_ray] == [r.correct for r in runs.local[:8]]
    assert any(r.correct for r in runs.local) and not all(r.correct for r in runs.local)
    assert "paris" in runs.local[0].answer.lower()  # the model knows this one

    ray_arrays = sorted(p.name for p in arrays_dir(ray_path).iterdir())
    assert len(ray_arrays) == 2 and set(ray_arrays) < {
        p.name for p in arrays_dir(local_path).iterdir()
    }
    first8 = load_dataset(qa_file).head(8)
    ours = load_closed_book_arrays(ray_path, first8)
    theirs = load_closed_book_arrays(local_path, first8)
    assert ours.probe_hidden.shape == theirs.probe_hidden.shape
    np.testing.assert_allclose(
        ours.probe_hidden.astype(np.float32),
        theirs.probe_hidden.astype(np.float32),
        rtol=1e-2,
        atol=1e-2,
    )
    np.testing.assert_allclose(
        ours.sparsity_by_layer, theirs.sparsity_by_layer, rtol=1e-3, atol=1e-5
    )


def test_an_interrupted_cache_resumes_on_ray(batch_runs: BatchRuns) -> None:
    runs = batch_runs
    assert runs.resumed_questions == 7  # c10 to c16: the torn tenth row and the rest
    [path] = (runs.root / "partial").rglob("*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[:10] == runs.partial_lines and len(lines) == 17  # header, sixteen rows
    assert [(r.id, r.answer, r.correct) for r in runs.resumed] == [
        (r.id, r.answer, r.correct) for r in runs.local
    ]


def test_a_cache_filled_on_ray_is_read_by_the_local_path(
    batch_runs: BatchRuns, smollm: Any, qa_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowgate.evaluation.branches.closed_book import ClosedBookBranch, run_closed_book
    from knowgate.evaluation.datasets import load_dataset

    def refuse(*_: Any) -> None:
        raise AssertionError("a complete cache answered again")

    monkeypatch.setattr(ClosedBookBranch, "answer_batch", refuse)
    again = run_closed_book(
        smollm, load_dataset(qa_file, limit=8), cache_dir=batch_runs.root / "ray", progress=False
    )
    assert [(r.id, r.answer) for r in again] == [(r.id, r.answer) for r in batch_runs.on_ray]


def test_retrieval_branch_on_ray_answers_as_the_local_one(batch_runs: BatchRuns) -> None:
    ours, theirs = batch_runs.rag_on_ray, batch_runs.rag_local
    assert [r.id for r in ours] == ["c1", "c2", "c3", "c4"]
    assert [(r.answer, r.passage_ids, r.correct) for r in ours] == [
        (r.answer, r.passage_ids, r.correct) for r in theirs
    ]
    assert ours[0].passage_ids[0] == "paris" and ours[1].passage_ids[0] == "berlin"
    assert batch_runs.bench_rows == 4 and batch_runs.bench_retimed == []  # no timing sample


def test_calibrate_with_ray_fits_the_policy_of_the_local_path(
    batch_runs: BatchRuns,
    smollm: Any,
    qa_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from knowgate.evaluation.branches.closed_book import closed_book_cache_path
    from knowgate.evaluation.datasets import load_dataset

    # The --ray run starts from a cache holding the first three batches: its actors answer
    # the last four questions, and the fit reads rows of both paths.
    [done] = (batch_runs.root / "local").rglob("*.jsonl")
    start = closed_book_cache_path(smollm, load_dataset(qa_file), tmp_path / "cache")
    interrupted_copy(done, start, 12, torn=False)
    monkeypatch.setattr("knowgate.cli.calibrate.load_language_model", lambda _source: smollm)
    args = ["calibrate", "--data", str(qa_file), "--folds", "2", "--bootstrap", "0"]
    args += ["--no-select", "--calibration", "none", "--features", "prefill"]
    args += ["--batch-size", str(BATCH), "--no-progress"]
    runner = CliRunner()
    local = runner.invoke(
        app,
        [*args, "--cache-dir", str(batch_runs.root / "local"), "--out", str(tmp_path / "l.json")],
    )
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        app,
        [
            *args,
            *("--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.json")),
            *("--ray", "--workers", "2"),
        ],
    )
    assert remote.exit_code == 0, remote.output
    assert "Ray: 2 actors" in remote.output and "answered 4 questions" in remote.output
    ours = json.loads((tmp_path / "r.json").read_text())
    theirs = json.loads((tmp_path / "l.json").read_text())
    # The same policy: every field, numbers to rounding (an actor's signals may differ from the
    # local ones in the last bits); the id hashes the numbers, the creation time differs.
    for policy in (ours, theirs):
        del policy["created"], policy["policy_id"]
    assert_same_json(ours, theirs)
    assert ours["training"]["n_samples"] == len(QUESTIONS)


def assert_same_json(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal JSON values, floats to a relative 1e-3."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), where
        for key in theirs:
            assert_same_json(ours[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_json(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-3, abs=1e-6), where
    else:
        assert ours == theirs, where


def test_calibrate_refuses_ray_for_a_served_model(
    tmp_path: Path, qa_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowgate.models import ModelConfig, RemoteModel

    served = RemoteModel(ModelConfig(source="openai:http://127.0.0.1:9/v1#tiny"))
    monkeypatch.setattr("knowgate.cli.calibrate.load_language_model", lambda _source: served)
    args = ["calibrate", "--data", str(qa_file), "--out", str(tmp_path / "p.json"), "--ray"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "is a served model" in message and "drop --ray" in message
    assert not (tmp_path / "p.json").exists()
