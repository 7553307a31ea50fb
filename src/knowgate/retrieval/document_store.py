"""The documents of a knowledge base as JSON Lines: line ``i`` is FAISS row ``i``.

JSONL keeps the store readable with any tool, safe to load (no pickle) and cheap to checksum.
The whole store is read into memory on load: at about 1 KB a passage, a million passages is a
gigabyte, which is past the scale this store is meant for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval.documents import Document


def write_documents(path: Path, documents: Sequence[Document]) -> None:
    """Write one JSON object per line."""
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for doc in documents:
            fh.write(json.dumps(doc.to_json(), ensure_ascii=False))
            fh.write("\n")


def read_documents(path: Path) -> list[Document]:
    """Read a store written by :func:`write_documents`, checking every row.

    Raises:
        KnowledgeBaseError: the file is unreadable, a row is malformed, or an id repeats.
    """
    documents: list[Document] = []
    seen: set[str] = set()
    try:
        with path.open("r", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                doc = _parse_row(line, f"{path}:{line_no}")
                if doc.id in seen:
                    raise KnowledgeBaseError(f"{path}:{line_no}: duplicate document id {doc.id!r}")
                seen.add(doc.id)
                documents.append(doc)
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeBaseError(f"{path}: cannot read the document store: {exc}") from exc
    return documents


def _parse_row(line: str, origin: str) -> Document:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise KnowledgeBaseError(f"{origin}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict) or set(row) - {"id", "title", "text", "metadata"}:
        raise KnowledgeBaseError(f"{origin}: not a document row")
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise KnowledgeBaseError(f"{origin}: metadata must map strings to strings")
    try:
        return Document(row.get("id"), row.get("title"), row.get("text"), metadata)  # type: ignore[arg-type]
    except ValueError as exc:
        raise KnowledgeBaseError(f"{origin}: {exc}") from exc
