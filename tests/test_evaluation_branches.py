"""The branch runners' template and their cache keys, pinned for a fake model.

Long runs fill the branch caches for hours; a refactor that changed a key would silently start
them over (or, worse, mix answers of two configurations). The key material's structure and the
file naming are pinned here with values worked out by hand; the real models' keys are compared
across checkouts with ``benchmarks/cache_keys.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from branch_helpers import N_LAYERS, FakeLM
from knowgate.errors import DataError
from knowgate.evaluation.branches.cache import BranchRunner, arrays_dir, read_cache
from knowgate.evaluation.branches.closed_book import (
    ClosedBookBranch,
    cache_key_material,
    closed_book_cache_path,
)
from knowgate.evaluation.branches.peers import PeerBranch, peer_key_material
from knowgate.evaluation.branches.retrieval import RetrievalBranch, retrieval_key_material
from knowgate.evaluation.datasets import QADataset, QAExample, load_dataset

PROBE = "What is the capital of France?"
KB = {"manifest": "manifest.json", "sha256": "ab" * 32, "documents": 3, "embedding_model": "e"}


class _Formatter:
    def self_report(self, question: str) -> str:
        return f"Can you answer {question} from memory?"


class KeyLM(FakeLM):
    """A fake model whose RAG prompt shows its passages and that has a self-report prompt."""

    formatter = _Formatter()

    def format_prompt(self, question, passages=None):
        context = "".join(f"{p.title}: {p.text}\n" for p in passages or ())
        return f"{self.config.prompt.system_prompt}\n{context}Q: {question}\nA:"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def dataset(tmp_path) -> QADataset:
    path = tmp_path / "toy.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"What is number {i}?", "golden_answers": ["x"]} for i in (1, 2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(path)


def test_closed_book_key_material_is_pinned(dataset) -> None:
    lm = KeyLM()
    material = cache_key_material(lm, dataset)
    assert set(material) == {
        "format",
        "model_id",
        "model_fingerprint",
        "dtype",
        "layers",
        "prompt",
        "prompt_probe_sha256",
        "generation",
        "feature_names",
        "arrays",
        "dataset",
    }
    assert material["format"] == 1
    assert material["model_id"] == "fake-lm"
    # not a packaged, GGUF, local or hub model: the SHA-256 of its (empty) parameter dict
    assert material["model_fingerprint"] == "params:" + hashlib.sha256(b"").hexdigest()
    assert material["dtype"] == lm.config.dtype
    assert material["layers"] == [0, 1, 2, 3]
    # the self-report prompt keys the peer cache only
    # demonstrations key the caches in their own entry, and only when chosen per question, so
    # the prompt entry of fixed-shot caches is what it was before demonstration selection existed
    assert set(material["prompt"]) == {
        "style",
        "system_prompt",
        "rag_system_prompt",
        "few_shot_examples",
        "passage_template",
        "max_passage_chars",
    }
    assert "demonstrations" not in material
    assert material["prompt"]["system_prompt"] == "Answer briefly."
    assert material["prompt_probe_sha256"] == sha(f"Answer briefly.\nQ: {PROBE}\nA:")
    generation = lm.config.generation
    assert material["generation"] == {
        "max_new_tokens": generation.max_new_tokens,
        "stop_at_newline": generation.stop_at_newline,
    }
    assert cache_key_material(lm, dataset, max_new_tokens=4)["generation"]["max_new_tokens"] == 4
    assert set(material["arrays"]) == {"probe_hidden", "sparsity_by_layer"}
    assert material["arrays"]["probe_hidden"] == {
        "layers": [0, 1, 2, 3],  # 4 layers: every one is a probe layer
        "positions": ["prompt_end", "question_end", "question_mean"],
        "dtype": "float16",
    }
    assert set(material["arrays"]["sparsity_by_layer"]) == {"rows", "positions", "layers"}
    assert material["feature_names"] == sorted(material["feature_names"])
    assert "hidden_hoyer_last_at_question_end" in material["feature_names"]
    assert material["dataset"] == {"name": "toy", "content_hash": dataset.content_hash}


def test_other_branches_drop_the_signal_entries_and_add_their_own(dataset) -> None:
    lm = KeyLM()
    closed = cache_key_material(lm, dataset)
    shared = {k: v for k, v in closed.items() if k not in ("layers", "feature_names", "arrays")}
    retrieval = retrieval_key_material(lm, dataset, knowledge_base=KB, k=3, mode="hybrid")
    passage = "Paris: Paris is the capital.\n"
    assert retrieval == {
        **shared,
        "branch": "retrieval",
        "knowledge_base": KB,
        "k": 3,
        "search_mode": "hybrid",
        "rag_prompt_probe_sha256": sha(f"Answer briefly.\n{passage}Q: {PROBE}\nA:"),
    }
    peers = peer_key_material(lm, dataset, samples=5, temperature=1.0, seed=0)
    assert peers == {
        **shared,
        "branch": "peers",
        "samples": 5,
        "temperature": 1.0,
        "seed": 0,
        "self_report_words": ["yes", "no"],
        "self_report_probe_sha256": sha(f"Can you answer {PROBE} from memory?"),
    }


def test_cache_files_are_named_by_the_sha256_of_the_canonical_material(tmp_path, dataset) -> None:
    lm = KeyLM()
    key = sha(json.dumps(cache_key_material(lm, dataset), sort_keys=True))
    path = closed_book_cache_path(lm, dataset, tmp_path)
    assert path == tmp_path / "fake-lm" / f"toy-{key[:16]}.jsonl"
    assert ClosedBookBranch(lm).cache_path(dataset, tmp_path) == path
    peers = peer_key_material(lm, dataset, samples=5, temperature=1.0, seed=0)
    assert PeerBranch(lm).cache_path(dataset, tmp_path) == (
        tmp_path / "fake-lm" / f"toy-{sha(json.dumps(peers, sort_keys=True))[:16]}.jsonl"
    )


def test_default_cache_roots_are_the_branch_folders(monkeypatch, tmp_path, dataset) -> None:
    monkeypatch.setenv("KNOWGATE_RUNS_DIR", str(tmp_path))
    lm = KeyLM()
    assert ClosedBookBranch(lm).cache_path(dataset).parent == tmp_path / "closed_book" / "fake-lm"
    assert PeerBranch(lm).cache_path(dataset).parent == tmp_path / "peers" / "fake-lm"
    assert RetrievalBranch.folder == "retrieval"


class CountingBranch(BranchRunner[str]):
    """A toy branch: the template needs nothing but its four pieces."""

    folder = "counting"
    what = "counting"
    branch = "counting"

    def __init__(self, lm: Any) -> None:
        super().__init__(lm)
        self.batches: list[int] = []

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        return {
            "format": 1,
            "branch": self.branch,
            "dataset": {"name": dataset.name, "content_hash": dataset.content_hash},
        }

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        self.batches.append(len(chunk))
        return [{"length": len(ex.question)} for ex in chunk]

    @classmethod
    def parse_record(cls, row: Mapping[str, Any], example: QAExample, dataset: str) -> str:
        return f"{dataset}:{example.id}:{row['length']}"


def test_the_template_runs_caches_and_loads_without_a_model(tmp_path, dataset) -> None:
    runner = CountingBranch(FakeLM())
    first = runner.run(dataset, cache_dir=tmp_path, batch_size=1, progress=False)
    assert first == ["toy:q1:17", "toy:q2:17"] and runner.batches == [1, 1]
    assert runner.run(dataset, cache_dir=tmp_path, progress=False) == first
    assert runner.batches == [1, 1]  # nothing answered twice
    path = runner.cache_path(dataset, tmp_path)
    header, rows, _ = read_cache(path, "counting")
    assert header["branch"] == "counting" and set(rows) == {"q1", "q2"}
    assert CountingBranch.load(path, dataset) == first
    with pytest.raises(DataError, match="not a peer-signals cache"):
        PeerBranch.load(path, dataset)


def test_retrieval_records_read_the_plain_rag_stages() -> None:
    example = QAExample("q1", "What is number 1?", ("one",))
    row = {
        "answer": "one",
        "passage_ids": ["p1"],
        "retrieval_error": None,
        # a cache written before always-retrieve was plain RAG also timed a gate: ignored
        "timings_ms": {
            "prefill": 40.0,
            "signals": 2.0,
            "retrieve": 50.0,
            "answer_with_passages": 900.0,
        },
        "batch_size": 8,
    }
    record = RetrievalBranch.parse_record(row, example, "toy")
    assert record.retrieve_seconds == pytest.approx(0.05)
    assert record.answer_seconds == pytest.approx(0.9)
    assert record.correct and record.evidence_hit is None
    # the router fell back to a closed-book answer: its pass is the answer's cost
    fallback = {**row, "timings_ms": {"retrieve": 50.0, "decode": 300.0}, "passage_ids": []}
    assert RetrievalBranch.parse_record(fallback, example, "toy").answer_seconds == pytest.approx(
        0.3
    )
    with pytest.raises(DataError, match="malformed retrieval-branch record for 'q1'"):
        RetrievalBranch.parse_record({"answer": "x"}, example, "toy")


def test_closed_book_rows_of_a_fake_run_keep_their_layers(tmp_path, dataset) -> None:
    records = ClosedBookBranch(KeyLM()).run(dataset, cache_dir=tmp_path, progress=False)
    assert [r.id for r in records] == ["q1", "q2"]
    header, _, _ = read_cache(closed_book_cache_path(KeyLM(), dataset, tmp_path))
    assert header["layers"] == list(range(N_LAYERS))


def test_knowledge_base_fingerprint_of_a_flat_base_ignores_the_unset_ivf_pq_fields(
    tmp_path,
) -> None:
    # The retrieval caches of long runs are keyed by this fingerprint: fields added to the
    # manifest's index record later (IVF-PQ's) must leave the fingerprint of an older base as it
    # was - the SHA-256 of its manifest without timestamps, with the index fields it had then.
    from knowgate.evaluation.branches.retrieval import knowledge_base_fingerprint

    manifest = {
        "format": "knowgate-knowledge-base",
        "format_version": 1,
        "knowgate_version": "0.1.0",
        "created_at": "2026-12-01T00:00:00Z",
        "updated_at": "2026-12-01T00:00:00Z",
        "embedding_model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "dimension": 384,
        "normalized": True,
        "index": {"type": "flat", "metric": "inner_product"},
        "document_count": 3,
        "config": {"chunk_size": 200},
        "files": {"index.faiss": {"bytes": 10, "sha256": "cd" * 32}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    before = {
        k: v
        for k, v in manifest.items()
        if k not in ("created_at", "updated_at", "knowgate_version")
    }
    before["index"] = {
        "type": "flat",
        "metric": "inner_product",
        "hnsw_m": None,
        "hnsw_ef_construction": None,
    }
    expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    fingerprint = knowledge_base_fingerprint(tmp_path)
    assert fingerprint["sha256"] == expected
    assert fingerprint["documents"] == 3
    # embedding_backend, added later too: torch (what every older base used) leaves it as it
    # was; another backend makes another base, with another fingerprint.
    manifest["embedding_backend"] = "torch"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert knowledge_base_fingerprint(tmp_path)["sha256"] == expected
    manifest["embedding_backend"] = "onnx"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert knowledge_base_fingerprint(tmp_path)["sha256"] != expected


# ------------------------------------------------------------ batches answered elsewhere


class ReplicaExecutor:
    """A batch executor without Ray: the branch rebuilt around a fresh fake model.

    The batches are answered last first; the rows are yielded in batch order, as promised.
    """

    def __init__(self) -> None:
        self.models: list[KeyLM] = []
        self.batches: list[list[str]] = []

    def answer_batches(self, branch, dataset, chunks):
        lm = KeyLM()
        self.models.append(lm)
        replica = branch.replica()(lm)
        self.batches += [[ex.id for ex in chunk] for chunk in chunks]
        answered = {i: replica.answer_batch(chunks[i]) for i in reversed(range(len(chunks)))}
        for i in range(len(chunks)):
            yield answered[i]


@pytest.fixture
def five(tmp_path) -> QADataset:
    path = tmp_path / "five.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"What is number {i}?", "golden_answers": [f"answer {i}"]}
        for i in range(1, 6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(path)


def _lines_without_creation_time(path) -> list[str]:
    header, *records = path.read_text().splitlines()
    return [json.dumps({k: v for k, v in json.loads(header).items() if k != "created"}), *records]


def test_a_cache_filled_by_an_executor_is_the_local_cache(tmp_path, five) -> None:
    local_lm, driver_lm = KeyLM(), KeyLM()
    local = ClosedBookBranch(local_lm).run(five, cache_dir=tmp_path / "a", batch_size=2)
    executor = ReplicaExecutor()
    remote = ClosedBookBranch(driver_lm).run(
        five, cache_dir=tmp_path / "b", batch_size=2, progress=False, executor=executor
    )
    # The local batches (2, 2, 1), all answered by the replica, none by the driver's model.
    assert executor.batches == [["q1", "q2"], ["q3", "q4"], ["q5"]]
    assert len(executor.models[0].prompts_run) == 5 and driver_lm.prompts_run == []
    assert [r.correct for r in remote] == [False, True, False, True, False]  # even: "answer n"
    assert remote == local
    a = closed_book_cache_path(local_lm, five, tmp_path / "a")
    b = closed_book_cache_path(driver_lm, five, tmp_path / "b")
    assert a.name == b.name
    assert _lines_without_creation_time(a) == _lines_without_creation_time(b)
    arrays_a = sorted(p.name for p in arrays_dir(a).iterdir())
    assert arrays_a == sorted(p.name for p in arrays_dir(b).iterdir()) and len(arrays_a) == 3
    for name in arrays_a:
        with np.load(arrays_dir(a) / name) as x, np.load(arrays_dir(b) / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key])


def test_an_interrupted_cache_resumes_through_an_executor(tmp_path, five) -> None:
    lm = KeyLM()
    complete = ClosedBookBranch(lm).run(five, cache_dir=tmp_path / "a", batch_size=2)
    path = closed_book_cache_path(lm, five, tmp_path / "a")
    header, *records = path.read_text().splitlines(keepends=True)
    # Interrupted while writing the fourth row: three whole rows, then a torn line.
    path.write_text(header + "".join(records[:3]) + records[3][:25])
    executor = ReplicaExecutor()
    resumed = ClosedBookBranch(lm).run(
        five, cache_dir=tmp_path / "a", batch_size=2, progress=False, executor=executor
    )
    assert executor.batches == [["q4", "q5"]]  # only the missing rows, in the local batches
    assert len(lm.prompts_run) == 5  # the driver's model ran only the first, local run

    def outcome(records):  # a resumed batch holds other questions: batch_size may differ
        return [(r.id, r.answer, r.correct, r.features) for r in records]

    assert outcome(resumed) == outcome(complete)
    lines = path.read_text().splitlines(keepends=True)
    assert lines[:4] == [header, *records[:3]] and len(lines) == 6


def test_a_served_branch_has_no_replica() -> None:
    from types import SimpleNamespace

    from knowgate.errors import ConfigError
    from knowgate.evaluation.branches.closed_book import ServedClosedBookBranch

    served = ServedClosedBookBranch(SimpleNamespace(model_id="served-model"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="served-model is a served model"):
        served.replica()
