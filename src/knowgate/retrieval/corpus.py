"""Read corpus sources (JSONL files, text and Markdown folders, Document objects) into documents.

Problems are reported with the file and line that caused them. Empty texts are skipped and
counted; duplicate ids are an error unless the configuration says to skip them.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from knowgate.errors import DataError, InputError
from knowgate.jsonio import iter_jsonl
from knowgate.retrieval.config import KnowledgeBaseConfig
from knowgate.retrieval.documents import Document
from knowgate.retrieval.splitter import split_markdown, split_text

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
SourceItem = str | Path | Document
Sources = Sequence[str | Path] | Iterable[Document] | Iterable[SourceItem] | str | Path


@dataclass
class IngestReport:
    """What happened to the input of a build or an append.

    Attributes:
        added: documents that went into the base.
        skipped_empty: documents whose text was empty or whitespace.
        skipped_duplicates: documents whose id was already taken (``on_duplicate="skip"``).
        files: the files that were read.
    """

    added: int = 0
    skipped_empty: int = 0
    skipped_duplicates: int = 0
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{self.added} passages added from {len(self.files)} file(s); skipped "
            f"{self.skipped_empty} empty and {self.skipped_duplicates} duplicate"
        )


def collect_documents(
    sources: Sources,
    config: KnowledgeBaseConfig,
    *,
    existing_ids: set[str] | None = None,
) -> tuple[list[Document], IngestReport]:
    """Read every source into documents, applying the empty and duplicate rules.

    Args:
        sources: paths (JSONL / JSONL.gz files, text or Markdown files, folders of them) and/or
            :class:`Document` objects. A single path may be passed as is.
        config: splitter settings and the duplicate rule.
        existing_ids: ids already in the base (for appends).

    Returns:
        The accepted documents and a report of what was read and skipped.

    Raises:
        InputError: a source is of an unsupported type.
        DataError: a file is missing, unreadable or malformed, or an id repeats (with
            ``on_duplicate="error"``).
    """
    report = IngestReport()
    seen: dict[str, str] = dict.fromkeys(existing_ids or (), "the existing knowledge base")
    accepted: list[Document] = []
    for doc, origin in _iter_documents(sources, config, report):
        if not doc.text.strip():
            report.skipped_empty += 1
            continue
        if doc.id in seen:
            if config.on_duplicate == "skip":
                report.skipped_duplicates += 1
                continue
            raise DataError(
                f"duplicate document id {doc.id!r} in {origin} (first seen in {seen[doc.id]}); "
                "set on_duplicate='skip' (CLI: --skip-duplicates) to keep the first"
            )
        seen[doc.id] = origin
        accepted.append(doc)
    report.added = len(accepted)
    log.info(report.summary())
    return accepted, report


def _iter_documents(
    sources: Sources, config: KnowledgeBaseConfig, report: IngestReport
) -> Iterator[tuple[Document, str]]:
    if isinstance(sources, dict):
        raise InputError("sources must be paths or Document objects, not a mapping")
    items: Iterable[Any] = [sources] if isinstance(sources, str | Path) else sources
    for item in items:
        if isinstance(item, Document):
            yield item, "the documents passed in"
        elif isinstance(item, str | Path):
            for path, id_base in _expand(Path(item), config):
                report.files.append(str(path))
                yield from _read_file(path, id_base, config)
        else:
            raise InputError(
                f"unsupported corpus source {item!r} ({type(item).__name__}): pass file or "
                "folder paths, or knowgate.retrieval.Document objects"
            )


def _supported_suffix(path: Path, config: KnowledgeBaseConfig) -> str | None:
    name = path.name.lower()
    for suffix in (*JSONL_SUFFIXES, *config.splitter.markdown_extensions):
        if name.endswith(suffix.lower()):
            return suffix
    for suffix in config.splitter.text_extensions:
        if name.endswith(suffix.lower()):
            return suffix
    return None


def _expand(path: Path, config: KnowledgeBaseConfig) -> list[tuple[Path, str]]:
    """A file as itself; a folder as its supported files (recursively, sorted, hidden skipped).

    Each file comes with the base of its chunk ids: the folder's name plus the path inside it
    (``docs/guide/setup.md``), or the parent folder's name plus the file name for a single file.
    Ids do not depend on the working directory, so the same folder always yields the same ids.
    """
    if path.is_file():
        if _supported_suffix(path, config) is None:
            raise DataError(f"{path}: unsupported corpus file; expected {_supported_list(config)}")
        return [(path, f"{path.resolve().parent.name}/{path.name}")]
    if path.is_dir():
        folder_name = path.resolve().name
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and _supported_suffix(p, config) is not None
        )
        if not files:
            raise DataError(f"{path}: folder holds no corpus files ({_supported_list(config)})")
        return [(f, f"{folder_name}/{f.relative_to(path).as_posix()}") for f in files]
    raise DataError(f"corpus source not found: {path}")


def _supported_list(config: KnowledgeBaseConfig) -> str:
    suffixes = (
        *JSONL_SUFFIXES,
        *config.splitter.markdown_extensions,
        *config.splitter.text_extensions,
    )
    return ", ".join(suffixes)


def _read_file(
    path: Path, id_base: str, config: KnowledgeBaseConfig
) -> Iterator[tuple[Document, str]]:
    suffix = _supported_suffix(path, config)
    if suffix in JSONL_SUFFIXES:
        yield from read_jsonl_corpus(path)
        return
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text: {exc}") from exc
    if suffix in config.splitter.markdown_extensions:
        chunks = split_markdown(source, path.stem, config.splitter)
    else:
        chunks = split_text(source, path.stem, config.splitter)
    for n, chunk in enumerate(chunks):
        metadata = {"source": str(path)}
        if chunk.section:
            metadata["section"] = chunk.section
        doc = Document(f"{id_base}#{n}", chunk.title, chunk.text, metadata)
        yield doc, f"{path} (chunk {n})"


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_jsonl_corpus(path: Path) -> Iterator[tuple[Document, str]]:
    """Documents of a ``{"id", "title", "text"}`` JSONL (or JSONL.gz) file, line by line.

    ``title`` may be missing (empty title); other keys go to ``metadata`` when they are strings.
    """
    try:
        with _open_text(path) as fh:
            for _, origin, row in iter_jsonl(fh, path, DataError):
                yield _row_to_document(row, origin), origin
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _row_to_document(row: Any, origin: str) -> Document:
    if not isinstance(row, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type(row).__name__}")
    doc_id = row.get("id")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        raise DataError(f"{origin}: 'id' must be a non-empty string, got {doc_id!r}")
    text = row.get("text")
    if not isinstance(text, str):
        raise DataError(f"{origin}: 'text' must be a string, got {type(text).__name__}")
    title = row.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataError(f"{origin}: 'title' must be a string, got {type(title).__name__}")
    extra = row.get("metadata")
    metadata = (
        {str(k): v for k, v in extra.items() if isinstance(v, str)}
        if isinstance(extra, dict)
        else {}
    )
    return Document(doc_id, title, text, metadata)
