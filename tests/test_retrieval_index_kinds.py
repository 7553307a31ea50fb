"""The knowledge base picks exact, HNSW or IVF-PQ by size, converts on growth, and persists each.

The thresholds are lowered through the configuration so that tiny data exercises every kind;
expected neighbours come from brute-force numpy, not from FAISS.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval import (
    Document,
    HnswConfig,
    IvfPqConfig,
    KnowledgeBase,
    KnowledgeBaseConfig,
)
from knowgate.retrieval.dense_index import DenseIndex, index_type_for, ivf_nlist
from test_retrieval_support import TINY_DOCS

DIM = 32


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small_config(**changes: object) -> KnowledgeBaseConfig:
    values: dict[str, object] = {
        "exact_search_max": 100,
        "hnsw_max": 300,
        "hnsw": HnswConfig(m=8, ef_construction=64, ef_search=64),
        "ivf_pq": IvfPqConfig(m=16, nbits=8, nprobe=1 << 20),  # nprobe >= nlist: scan all
    }
    values.update(changes)
    return KnowledgeBaseConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "kind"),
    [(0, "flat"), (100, "flat"), (101, "hnsw"), (300, "hnsw"), (301, "ivf_pq")],
)
def test_kind_by_size(size: int, kind: str) -> None:
    assert index_type_for(size, small_config()) == kind


def test_default_thresholds() -> None:
    config = KnowledgeBaseConfig()
    assert index_type_for(200_000, config) == "flat"
    assert index_type_for(200_001, config) == "hnsw"
    assert index_type_for(2_000_000, config) == "hnsw"
    assert index_type_for(2_000_001, config) == "ivf_pq"


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="hnsw_max"):
        KnowledgeBaseConfig(exact_search_max=10, hnsw_max=5)


def test_nlist_rule() -> None:
    # 4 * sqrt(1e6) = 4000 -> 4096; 4 * sqrt(400) = 80 -> 64, capped at 400 // 39 = 10.
    assert ivf_nlist(1_000_000, KnowledgeBaseConfig()) == 4096
    assert ivf_nlist(400, KnowledgeBaseConfig()) == 10
    assert ivf_nlist(400, KnowledgeBaseConfig(ivf_pq=IvfPqConfig(nlist=3))) == 3


def test_growth_converts_flat_to_hnsw_to_ivf_pq_keeping_rows() -> None:
    vectors = unit_vectors(400, seed=1)
    index = DenseIndex.create(DIM, small_config())
    index.add(vectors[:100])
    assert index.index_type == "flat"
    index.add(vectors[100:250])
    assert index.index_type == "hnsw"
    index.add(vectors[250:])
    assert index.index_type == "ivf_pq" and len(index) == 400
    nlist, m, nbits = index.ivf_params or (0, 0, 0)
    assert (nlist, m, nbits) == (10, 16, 8)  # 400 // 39 = 10 lists
    # Row i is still vector i: each stored vector, as a query, finds itself (brute force agrees).
    _, ids = index.search(vectors, 1)
    truth = np.argmax(vectors @ vectors.T, axis=1)
    assert (truth == np.arange(400)).all()
    assert (ids[:, 0] == truth).mean() >= 0.95


def test_ivf_pq_recall_against_brute_force() -> None:
    vectors, queries = unit_vectors(1000, seed=2), unit_vectors(50, seed=3)
    index = DenseIndex.create(DIM, small_config(exact_search_max=0, hnsw_max=0))
    index.add(vectors)
    assert index.index_type == "ivf_pq"
    _, ids = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids, truth, strict=True)])
    assert recall >= 0.6  # 16 codes of 2 dims each: coarse, but far above chance (0.01)


@pytest.mark.parametrize(("hnsw_max", "kind"), [(1000, "flat"), (1000, "hnsw"), (0, "ivf_pq")])
def test_each_kind_round_trips(tmp_path: Path, hnsw_max: int, kind: str) -> None:
    config = small_config(exact_search_max=0 if kind != "flat" else 1000, hnsw_max=hnsw_max)
    vectors = unit_vectors(300, seed=4)
    index = DenseIndex.create(DIM, config)
    index.add(vectors)
    assert index.index_type == kind
    index.write(tmp_path / "index.faiss")
    again = DenseIndex.read(tmp_path / "index.faiss", config.model_copy(update={}))
    assert again.index_type == kind
    np.testing.assert_array_equal(
        again.search(vectors[:20], 5)[1], index.search(vectors[:20], 5)[1]
    )


def test_runtime_nprobe_comes_from_the_loading_config(tmp_path: Path) -> None:
    index = DenseIndex.create(DIM, small_config(exact_search_max=0, hnsw_max=0))
    index.add(unit_vectors(400, seed=5))
    index.write(tmp_path / "index.faiss")
    narrow = small_config(ivf_pq=IvfPqConfig(m=16, nprobe=2))
    loaded = DenseIndex.read(tmp_path / "index.faiss", narrow)
    assert loaded.index.nprobe == 2


def test_read_rejects_foreign_and_untrained_indexes(tmp_path: Path) -> None:
    faiss.write_index(faiss.IndexFlatL2(DIM), str(tmp_path / "l2.faiss"))
    with pytest.raises(KnowledgeBaseError, match="does not use inner product"):
        DenseIndex.read(tmp_path / "l2.faiss", small_config())
    flat_sq = faiss.IndexScalarQuantizer(
        DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    faiss.write_index(flat_sq, str(tmp_path / "sq.faiss"))
    with pytest.raises(KnowledgeBaseError, match="unsupported FAISS index type"):
        DenseIndex.read(tmp_path / "sq.faiss", small_config())
    untrained = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, 4, 8, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.write_index(untrained, str(tmp_path / "untrained.faiss"))
    with pytest.raises(KnowledgeBaseError, match="untrained"):
        DenseIndex.read(tmp_path / "untrained.faiss", small_config())


def test_too_few_vectors_to_train_is_a_clear_error() -> None:
    index = DenseIndex.create(DIM, small_config(exact_search_max=0, hnsw_max=0))
    with pytest.raises(KnowledgeBaseError, match="needs at least 256 vectors"):
        index.add(unit_vectors(100, seed=6))


def test_dimension_must_be_divisible_by_m() -> None:
    index = DenseIndex.create(
        DIM, small_config(exact_search_max=0, hnsw_max=0, ivf_pq=IvfPqConfig(m=5))
    )
    with pytest.raises(KnowledgeBaseError, match="must divide the vector dimension"):
        index.add(unit_vectors(300, seed=7))


# ------------------------------------------------------------ the knowledge base, real embeddings

FILLER = [
    Document(f"filler-{i}", f"Filler {i}", f"Note {i}: the shop sells {thing} on day {i}.")
    for i, thing in enumerate(
        ["apples", "pears", "bread", "cheese", "tea", "coffee", "rice", "beans"] * 2
    )
]


def test_knowledge_base_uses_ivf_pq_past_hnsw_max_and_persists_it(tmp_path: Path) -> None:
    config = KnowledgeBaseConfig(
        exact_search_max=4, hnsw_max=8, ivf_pq=IvfPqConfig(m=48, nbits=4, nprobe=8)
    )
    docs = [*TINY_DOCS, *FILLER]  # 24 documents: 16 codes a sub-space need >= 16 vectors
    kb = KnowledgeBase.build(docs, config, progress=False)
    assert kb.index_type == "ivf_pq"
    assert kb.search("What is the capital of Germany?", k=1, mode="dense")[0].id == "berlin"
    kb.save(tmp_path / "kb")
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    # nlist: 24 // 39 = 0 -> at least one list.
    assert manifest["index"] | {} == {
        "type": "ivf_pq",
        "metric": "inner_product",
        "hnsw_m": None,
        "hnsw_ef_construction": None,
        "ivf_nlist": 1,
        "pq_m": 48,
        "pq_nbits": 4,
    }
    loaded = KnowledgeBase.load(tmp_path / "kb")
    assert loaded.index_type == "ivf_pq" and len(loaded) == len(docs)
    assert loaded.describe()["ivf_pq"]["nbits"] == 4
    assert loaded.search("Which organ produces insulin?", k=1, mode="dense")[0].id == "insulin"

    manifest["index"]["pq_m"] = 24
    (tmp_path / "kb" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KnowledgeBaseError, match=r"\(nlist, m, nbits\) \(1, 48, 4\)"):
        KnowledgeBase.load(tmp_path / "kb")
