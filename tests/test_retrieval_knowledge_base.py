"""Build, search, save, load and append, with the real packaged embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from knowgate.errors import InputError, KnowledgeBaseError
from knowgate.retrieval import (
    DEFAULT_EMBEDDING_MODEL,
    Document,
    HnswConfig,
    KnowledgeBase,
    KnowledgeBaseConfig,
    Passage,
)
from test_retrieval_support import TINY_DOCS, fresh_tiny_kb, tiny_kb

QUESTIONS = {
    "What is the capital of Germany?": "berlin",
    "Who created the Python programming language?": "python",
    "Which organ produces insulin?": "insulin",
    "What is the tallest mountain on Earth?": "everest",
}


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return tiny_kb()


def test_build_reports_model_dimension_and_size(kb: KnowledgeBase) -> None:
    assert len(kb) == len(TINY_DOCS)
    assert kb.embedding_model_id == DEFAULT_EMBEDDING_MODEL
    assert kb.dimension == 384
    assert kb.index_type == "flat"
    assert kb.last_ingest is not None and kb.last_ingest.added == len(TINY_DOCS)
    assert "paris" in kb and kb.get("paris") == TINY_DOCS[0]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_finds_the_answer_passage_first(kb: KnowledgeBase, mode: str) -> None:
    for question, expected in QUESTIONS.items():
        top = kb.search(question, k=3, mode=mode)  # type: ignore[arg-type]
        assert top[0].id == expected, (mode, question, [p.id for p in top])
        assert [p.rank for p in top] == list(range(1, len(top) + 1))
        scores = [p.score for p in top]
        assert scores == sorted(scores, reverse=True)


def test_dense_scores_are_cosine_similarities(kb: KnowledgeBase) -> None:
    passages = kb.search("capital of France", k=len(kb), mode="dense")
    assert len(passages) == len(kb)
    assert all(-1.0 <= p.score <= 1.0 + 1e-5 for p in passages)
    assert isinstance(passages[0], Passage) and passages[0].title == "Paris"


def test_hybrid_scores_are_reciprocal_rank_fusion(kb: KnowledgeBase) -> None:
    top = kb.search("What is the capital of Germany?", k=1, mode="hybrid")[0]
    rrf_k = kb.config.rrf_k
    assert top.score == pytest.approx(2 / (rrf_k + 1))  # first in both lists


def test_bm25_leaves_out_documents_without_shared_terms(kb: KnowledgeBase) -> None:
    passages = kb.search("Salzburg", k=5, mode="bm25")
    assert [p.id for p in passages] == ["mozart"]
    assert kb.search("the of and", k=5, mode="bm25") == []  # only stopwords


def test_k_larger_than_base_returns_everything(kb: KnowledgeBase) -> None:
    assert len(kb.search("anything at all", k=100, mode="dense")) == len(kb)


def test_batch_search_matches_single_search(kb: KnowledgeBase) -> None:
    questions = list(QUESTIONS)
    batched = kb.search_batch(questions, k=3)
    for question, result in zip(questions, batched, strict=True):
        single = kb.search(question, k=3)
        assert [p.id for p in result] == [p.id for p in single]
        assert [p.score for p in result] == pytest.approx([p.score for p in single], abs=1e-5)
    assert kb.search_batch([], k=3) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda kb: kb.search("", k=3), "empty"),
        (lambda kb: kb.search("   ", k=3), "empty"),
        (lambda kb: kb.search(None, k=3), "not a string"),
        (lambda kb: kb.search("q", k=0), "positive integer"),
        (lambda kb: kb.search("q", k=2.5), "positive integer"),
        (lambda kb: kb.search("q", k=True), "positive integer"),
        (lambda kb: kb.search("q", mode="semantic"), "unknown search mode"),
        (lambda kb: kb.search_batch("just one string"), "list of queries"),
    ],
)
def test_bad_search_input_is_rejected(kb: KnowledgeBase, call, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(kb)


def test_empty_corpus_is_an_error() -> None:
    with pytest.raises(KnowledgeBaseError, match="nothing to index"):
        KnowledgeBase.build([Document("a", "t", "  ")], progress=False)


def test_save_load_round_trip_needs_no_reembedding(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.save(tmp_path / "kb")
    names = sorted(p.name for p in (tmp_path / "kb").iterdir())
    assert names == ["bm25", "documents.jsonl", "index.faiss", "manifest.json"]
    assert not list(tmp_path.glob(".kb.*")), "temporary directories must not be left behind"
    loaded = KnowledgeBase.load(tmp_path / "kb")
    assert len(loaded) == len(kb)
    assert loaded.embedding_model_id == kb.embedding_model_id
    assert loaded.documents == kb.documents
    loaded_index = loaded._dense.index
    original_index = kb._dense.index
    np.testing.assert_array_equal(
        loaded_index.reconstruct_n(0, len(kb)), original_index.reconstruct_n(0, len(kb))
    )
    for question in QUESTIONS:
        for mode in ("dense", "bm25", "hybrid"):
            a = loaded.search(question, k=3, mode=mode)  # type: ignore[arg-type]
            b = kb.search(question, k=3, mode=mode)  # type: ignore[arg-type]
            assert [(p.id, round(p.score, 5)) for p in a] == [(p.id, round(p.score, 5)) for p in b]


def test_append_keeps_base_valid_across_save_and_load(tmp_path: Path) -> None:
    base = fresh_tiny_kb()
    base.save(tmp_path / "kb")
    loaded = KnowledgeBase.load(tmp_path / "kb")
    report = loaded.add(
        [
            Document("rome", "Rome", "Rome is the capital of Italy, founded on seven hills."),
            Document("blank", "Blank", ""),
        ],
        progress=False,
    )
    assert (report.added, report.skipped_empty) == (1, 1)
    assert loaded.search("What is the capital of Italy?", k=1)[0].id == "rome"
    assert loaded.search("seven hills", k=1, mode="bm25")[0].id == "rome"
    loaded.save(tmp_path / "kb")
    again = KnowledgeBase.load(tmp_path / "kb")
    assert len(again) == len(TINY_DOCS) + 1
    assert again.search("What is the capital of Italy?", k=1)[0].id == "rome"
    assert again.search("What is the capital of Germany?", k=1)[0].id == "berlin"
    with pytest.raises(Exception, match="duplicate document id 'rome'"):
        again.add([Document("rome", "Rome", "again")], progress=False)
    assert len(again) == len(TINY_DOCS) + 1  # a failed append changes nothing
    skipping = KnowledgeBase.load(tmp_path / "kb", KnowledgeBaseConfig(on_duplicate="skip"))
    assert skipping.add([Document("rome", "Rome", "again")], progress=False).skipped_duplicates == 1


def test_hnsw_above_threshold_and_conversion_on_append(tmp_path: Path) -> None:
    config = KnowledgeBaseConfig(exact_search_max=4, hnsw=HnswConfig(m=8, ef_search=16))
    big = KnowledgeBase.build(list(TINY_DOCS), config, progress=False)
    assert big.index_type == "hnsw"
    assert big.search("What is the capital of Germany?", k=1, mode="dense")[0].id == "berlin"

    small_config = KnowledgeBaseConfig(exact_search_max=len(TINY_DOCS))
    growing = KnowledgeBase.build(list(TINY_DOCS), small_config, progress=False)
    assert growing.index_type == "flat"
    growing.add([Document("rome", "Rome", "Rome is the capital of Italy.")], progress=False)
    assert growing.index_type == "hnsw"
    assert growing.search("What is the capital of Germany?", k=1, mode="dense")[0].id == "berlin"
    assert growing.search("capital of Italy", k=1, mode="dense")[0].id == "rome"
    growing.save(tmp_path / "kb")
    loaded = KnowledgeBase.load(tmp_path / "kb")
    assert loaded.index_type == "hnsw" and len(loaded) == len(TINY_DOCS) + 1


def test_load_with_runtime_config_changes_mode_not_index(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.save(tmp_path / "kb")
    config = KnowledgeBaseConfig(mode="bm25", index_titles=False)
    loaded = KnowledgeBase.load(tmp_path / "kb", config)
    assert loaded.config.mode == "bm25"
    assert loaded.config.index_titles is True  # index-defining: the base's value wins
    assert loaded.search("Salzburg", k=3)[0].id == "mozart"


def test_save_refuses_to_overwrite_a_foreign_folder(kb: KnowledgeBase, tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(KnowledgeBaseError, match="not a knowledge base"):
        kb.save(foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"jpeg"


def test_failed_save_leaves_previous_base_intact(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb.save(tmp_path / "kb")
    before = (tmp_path / "kb" / "manifest.json").read_text()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("knowgate.retrieval.knowledge_base.write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        kb.save(tmp_path / "kb")
    assert (tmp_path / "kb" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]
    assert len(KnowledgeBase.load(tmp_path / "kb")) == len(kb)


def test_markdown_folder_base(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "install.md").write_text(
        "# Installing\n\nUse pip to install the package.\n\n"
        "## Offline\n\nCopy the wheels to the machine first, then install without an index.\n"
    )
    (docs / "faq.md").write_text("# FAQ\n\n## Colours\n\nThe logo is teal and orange.\n")
    kb = KnowledgeBase.build([docs], progress=False)
    assert len(kb) == 3
    top = kb.search("What colour is the logo?", k=1)[0]
    assert top.id == "docs/faq.md#0" and top.title == "FAQ › Colours"
    assert kb.search("installing without network access", k=1)[0].title == "Installing › Offline"
