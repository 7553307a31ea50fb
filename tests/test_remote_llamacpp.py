"""A served model end to end: llama.cpp's OpenAI-compatible server on loopback.

The packaged SmolLM2 GGUF is served by ``python -m llama_cpp.server`` (llama-cpp-python, the
``llamacpp`` extra; ``$KNOWGATE_LLAMA_CPP_PYTHON`` may name another interpreter that has it).
Through it: the router gates and answers, ``knowgate calibrate`` fits a policy keyed by the
served model, and ``knowgate bench`` scores policies on both branches. Skipped, with the reason,
when llama-cpp-python is not installed.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.models import ModelConfig, RemoteModel
from knowgate.models.llamacpp import GREEDY_BODY, llama_cpp_available, llama_cpp_server
from knowgate.policy import FusedPolicy, build_policy, load_policy
from knowgate.routing import Router

pytestmark = pytest.mark.slow
runner = CliRunner()
RELATIONS = {"capital", "country", "sport", "capital of", "religion"}


@dataclass
class Doc:
    id: str
    title: str
    text: str
    score: float


N_QUESTIONS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not llama_cpp_available():
        pytest.skip(
            "llama-cpp-python is not installed (pip install 'knowgate[llamacpp]', or set "
            "$KNOWGATE_LLAMA_CPP_PYTHON to an interpreter that has it)"
        )
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp_server("smollm2-135m", log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def model_yaml(server, tmp_path_factory) -> Path:
    """A router config whose model is the served one, decoding greedily."""
    path = tmp_path_factory.mktemp("config") / "served.yaml"
    remote = {
        "base_url": server.base_url,
        "model": server.model,
        "extra_body": GREEDY_BODY,
        # llama-cpp-python's server answers one request at a time; on a shared CI machine a
        # call can take seconds, so queueing several must not trip the timeout
        "concurrency": 1,
        "timeout_s": 600,
    }
    path.write_text(yaml.safe_dump({"model": {"remote": remote}}))
    return path


@pytest.fixture(scope="module")
def served(model_yaml) -> RemoteModel:
    from knowgate.config import load_config

    return RemoteModel(load_config(model_yaml).model)


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory, shared_data):
    """(questions file, knowledge-base dir) from PopQA questions with gold evidence."""
    from knowgate.retrieval import KnowledgeBase

    root = tmp_path_factory.mktemp("served-bench")
    rows = []
    with (shared_data / "qa" / "popqa_random.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["metadata"].get("prop") in RELATIONS and row["metadata"].get("evidence_ids"):
                rows.append(row)
            if len(rows) == N_QUESTIONS:
                break
    questions = root / "popqa_served.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    wanted = {e for r in rows for e in r["metadata"]["evidence_ids"]}
    with gzip.open(shared_data / "corpus" / "wiki18.jsonl.gz", "rt", encoding="utf-8") as fh:
        passages = [line for line in fh if json.loads(line)["id"] in wanted]
    corpus = root / "evidence.jsonl"
    corpus.write_text("".join(passages), encoding="utf-8")
    kb_dir = root / "kb"
    KnowledgeBase.build([corpus], progress=False).save(kb_dir)
    return questions, kb_dir


def test_served_prompt_matches_the_local_chat_template(served, smollm) -> None:
    # The server applies the GGUF's chat template to the messages; it must build the prompt the
    # local model builds from the same prompt config (same length in tokens).
    questions = ["What is the capital of France?", "Who wrote the novel Dracula?"]
    drafts = served.draft(questions)
    local = [smollm.count_tokens(smollm.format_prompt(q)) for q in questions]
    assert [d.prompt_tokens for d in drafts] == local
    for d in drafts:
        assert d.features and set(d.features) == set(served.feature_names())
        assert d.stats is not None and d.stats.k == 20


def test_router_gates_and_answers_through_the_server(served) -> None:
    question = "What is the capital of France?"
    measured = served.draft([question])[0]
    p = measured.features["draft_min_prob"]

    class Retriever:
        calls = 0

        def search(self, query, k=3):
            Retriever.calls += 1
            return [Doc("p", "Paris", "Paris is the capital of France.", 1.0)]

    def gate_at(value: float) -> Router:
        policy = build_policy(
            "threshold", feature="draft_min_prob", direction="higher_is_known", value=value
        )
        return Router(served, policy, Retriever())

    known = gate_at(p / 2).route(question)
    assert known.decision.retrieve is False and known.calls == {"lm": 1, "retriever": 0}
    assert known.answer == measured.text  # greedy: the gate's draft is the answer
    unknown = gate_at(min(1.0, p * 1.5 + 1e-6)).route(question)
    assert unknown.decision.retrieve is True and unknown.calls == {"lm": 2, "retriever": 1}
    assert "paris" in unknown.answer.lower()
    assert Retriever.calls == 1


def test_calibrate_and_bench_through_the_server(served, model_yaml, bench_inputs, tmp_path):
    questions, kb_dir = bench_inputs
    cache = tmp_path / "closed_book"
    policy_path = tmp_path / "policy.json"
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--model",
            str(model_yaml),
            "--data",
            str(questions),
            "--folds",
            "2",
            "--bootstrap",
            "20",
            "--calibration",
            "sigmoid",
            "--cache-dir",
            str(cache),
            "--out",
            str(policy_path),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    policy = load_policy(policy_path, model_id=served.model_id)
    assert isinstance(policy, FusedPolicy) and policy.model_id == served.model_id
    assert policy.training["n_samples"] == N_QUESTIONS
    # a served model's default features: every signal its draft gives, nothing else
    assert set(policy.required_features) <= set(served.feature_names())
    assert any(f.startswith("draft_") for f in policy.required_features)
    (cached,) = list(cache.rglob("*.jsonl"))
    header = json.loads(cached.read_text().splitlines()[0])
    assert header["served"]["base_url"] == served.remote.base_url
    assert header["served"]["server_entry"]["id"] == served.remote.model

    # the fitted policy routes through the server
    from knowgate.config import RouterConfig

    config = RouterConfig(model=served.config, policy={"path": str(policy_path)})
    router = Router.from_config(config, model=served)
    routed = router.route("What is the capital of Italy?")
    assert routed.decision.p_known is not None and routed.decision.mode == "draft"

    out = tmp_path / "bench"
    result = runner.invoke(
        app,
        [
            "bench",
            "--model",
            str(model_yaml),
            "--data",
            str(questions),
            "--limit",
            "16",
            "--kb",
            str(kb_dir),
            "--folds",
            "2",
            "--bootstrap",
            "20",
            "--no-leave-one-dataset-out",
            "--no-null-check",
            "--closed-book-cache",
            str(cache),
            "--retrieval-cache",
            str(tmp_path / "retrieval"),
            "--out",
            str(out),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_questions"] == 16 and summary["model_id"] == served.model_id
    # the closed-book drafts came from calibrate's cache (a head of the same file)
    assert len(list(cache.rglob("*.jsonl"))) == 1
    policies = summary["policies"]
    assert policies["always"]["lm_calls_per_question"] == 1  # plain RAG: one call
    branch = summary["branches"]["popqa_served"]
    assert branch["evidence_in_prompt"] >= 0.9
    assert branch["retrieval_accuracy"] > branch["closed_book_accuracy"]
    records = (out / "both_branches.jsonl").read_text().splitlines()
    row = json.loads(records[0])
    assert row["model_id"] == served.model_id
    assert row["seconds"]["decode"] == 0 and row["seconds"]["prefill"] > 0
    assert "draft_mean_topk_entropy" in row["features"]
    assert "draft_mean_entropy" not in row["features"]  # a server gives no full entropy


def test_served_model_is_keyed_apart_from_the_local_one(served, smollm) -> None:
    from knowgate.evaluation.branches.closed_book import cache_key_material
    from knowgate.evaluation.datasets import QADataset, QAExample

    example = QAExample("a", "Who wrote Hamlet?", ("Shakespeare",))
    dataset = QADataset("tiny", Path("tiny.jsonl"), (example,), "0" * 64)
    served_key = cache_key_material(served, dataset)
    local_key = cache_key_material(smollm, dataset)
    assert served_key["model_id"] != local_key["model_id"]
    assert "served" in served_key and "model_fingerprint" in local_key
    other = RemoteModel(ModelConfig(remote={**served.remote.model_dump(), "revision": "v2"}))
    assert cache_key_material(other, dataset) != served_key
