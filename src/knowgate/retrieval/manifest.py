"""``manifest.json``: what a knowledge-base directory holds, and the checksums that prove it.

The manifest is written last, after every other file, so a directory whose manifest is valid and
whose checksums match was written completely by one save. Loading checks the format name and
version first (so a base from a newer knowgate gets a clear "unknown format version" rather than a
list of schema errors), then the schema, then every file's size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval.config import EmbeddingBackend
from knowgate.schema import StrictModel, validation_problems

MANIFEST_NAME = "manifest.json"
FORMAT_NAME: Final = "knowgate-knowledge-base"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"
BM25_DIR = "bm25"


class FileRecord(StrictModel):
    """Size and SHA-256 of one file of the base."""

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class IndexRecord(StrictModel):
    """The FAISS index: type, metric and its kind's parameters (HNSW graph, IVF-PQ codes).

    ``ivf_pq`` and its fields were added without a format-version bump: a base of the older
    kinds reads the same, and an older knowgate rejects an ``ivf_pq`` base with a schema error.
    """

    type: Literal["flat", "hnsw", "ivf_pq"]
    metric: Literal["inner_product"] = "inner_product"
    hnsw_m: int | None = None
    hnsw_ef_construction: int | None = None
    ivf_nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None


class Manifest(StrictModel):
    """The contents of ``manifest.json``.

    Attributes:
        format: always ``knowgate-knowledge-base``.
        format_version: layout version; a reader rejects versions it does not know.
        knowgate_version: the version that wrote the base.
        created_at: when the base was first built (UTC, ISO 8601).
        updated_at: when it was last saved.
        embedding_model_id: the embedding model the vectors came from.
        embedding_backend: what ran that model (``torch``, ``onnx``, ``onnx-int8``); queries
            are embedded with the same one. Added without a format-version bump: a manifest
            without it was written by the torch backend, the only one there was.
        dimension: vector length.
        normalized: vectors are unit length (inner product is cosine similarity).
        index: FAISS index description.
        document_count: documents in ``documents.jsonl`` = vectors in the index = BM25 documents.
        config: the full :class:`KnowledgeBaseConfig` the base was built with.
        files: size and checksum of every other file, by path relative to the directory.
    """

    format: Literal["knowgate-knowledge-base"]
    format_version: int
    knowgate_version: str
    created_at: str
    updated_at: str
    embedding_model_id: str = Field(min_length=1)
    embedding_backend: EmbeddingBackend = "torch"
    dimension: int = Field(ge=1)
    normalized: bool
    index: IndexRecord
    document_count: int = Field(ge=1)
    config: dict[str, Any]
    files: dict[str, FileRecord]


def file_record(path: Path) -> FileRecord:
    """Size and SHA-256 of ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return FileRecord(bytes=path.stat().st_size, sha256=digest.hexdigest())


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` (the caller writes it into a temporary directory)."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False)
    (directory / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")


def read_manifest(directory: Path) -> Manifest:
    """Read and validate ``manifest.json`` of a knowledge-base directory.

    Raises:
        KnowledgeBaseError: the directory or manifest is missing, the manifest is not JSON, names
            another format or an unknown version, or does not match the schema.
    """
    if not directory.is_dir():
        raise KnowledgeBaseError(f"knowledge base not found: {directory} is not a directory")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise KnowledgeBaseError(
            f"{directory} is not a knowledge base: it has no {MANIFEST_NAME} "
            "(build one with `knowgate index build`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KnowledgeBaseError(f"{path}: not valid JSON ({exc}); the base is corrupt") from exc
    if not isinstance(data, dict):
        raise KnowledgeBaseError(f"{path}: expected a JSON object; the base is corrupt")
    if data.get("format") != FORMAT_NAME:
        raise KnowledgeBaseError(
            f"{path}: not a knowgate knowledge-base manifest "
            f"(format is {data.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise KnowledgeBaseError(
            f"{path}: unknown format version {version!r}; this knowgate reads version "
            f"{FORMAT_VERSION}. Rebuild the base, or use the knowgate version that wrote it "
            f"({data.get('knowgate_version', 'unknown')})."
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc))
        raise KnowledgeBaseError(f"{path}: invalid manifest ({problems})") from exc


def verify_files(directory: Path, manifest: Manifest, required: tuple[str, ...]) -> None:
    """Check that every listed file exists with the recorded size and checksum.

    Args:
        directory: the knowledge-base directory.
        manifest: its manifest.
        required: paths that must be listed (a manifest cannot drop the index to pass).

    Raises:
        KnowledgeBaseError: naming the first missing, unlisted or altered file.
    """
    for name in required:
        if name not in manifest.files:
            raise KnowledgeBaseError(
                f"{directory / MANIFEST_NAME}: does not list required file {name!r}"
            )
    for name, record in manifest.files.items():
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise KnowledgeBaseError(f"{directory / MANIFEST_NAME}: unsafe file path {name!r}")
        if not path.is_file():
            raise KnowledgeBaseError(f"knowledge base {directory} is missing the file {name}")
        actual = file_record(path)
        if actual.bytes != record.bytes or actual.sha256 != record.sha256:
            raise KnowledgeBaseError(
                f"checksum mismatch for {path}: the manifest records {record.bytes} bytes, "
                f"sha256 {record.sha256[:12]}..., the file has {actual.bytes} bytes, sha256 "
                f"{actual.sha256[:12]}... The file was changed or corrupted after saving; "
                "rebuild the base."
            )
