"""Labelled question-answering data in FlashRAG's JSONL format.

One question per line: ``{"id", "question", "golden_answers": [aliases], "metadata": {...}}``.
PopQA rows carry ``metadata.s_pop`` (monthly page views of the subject: a popularity axis) and
``metadata.prop`` (the relation). Any file of that shape loads; problems are reported with the
file and line number.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from knowgate.errors import DataError
from knowgate.jsonio import iter_jsonl
from knowgate.text import normalize_question

DATA_DIR_ENV_VAR = "KNOWGATE_DATA_DIR"


def default_data_dir() -> Path:
    """``$KNOWGATE_DATA_DIR`` if set, else ``../shared/data`` relative to the working directory."""
    env = os.environ.get(DATA_DIR_ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd().parent / "shared" / "data"


@dataclass(frozen=True)
class QAExample:
    """One labelled question.

    Attributes:
        id: the row's identifier (unique within its file).
        question: the question text.
        golden_answers: every accepted alias of the answer.
        metadata: the row's ``metadata`` object, read-only.
    """

    id: str
    question: str
    golden_answers: tuple[str, ...]
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def popularity(self) -> float | None:
        """PopQA's ``s_pop`` (monthly page views of the subject), when the row has it."""
        value = self.metadata.get("s_pop")
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    @property
    def relation(self) -> str | None:
        """PopQA's relation (``metadata.prop``), when the row has it."""
        value = self.metadata.get("prop")
        return value if isinstance(value, str) and value else None

    @property
    def group(self) -> str:
        """Cross-validation group key (the normalised question text)."""
        return normalize_question(self.question)


@dataclass(frozen=True)
class QADataset:
    """The rows of one JSONL file (or the first ``limit`` of them).

    Attributes:
        name: the file's stem (``popqa_random``), the dataset's name in reports.
        path: where it was read from.
        examples: the rows, in file order.
        content_hash: SHA-256 over every row's id, question and answers of the *whole file*, so a
            limited load shares its cache with the full one (records are keyed by row id).
    """

    name: str
    path: Path
    examples: tuple[QAExample, ...]
    content_hash: str

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[QAExample]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> QAExample:
        return self.examples[index]

    def head(self, limit: int) -> QADataset:
        """The first ``limit`` rows (same name, path and content hash)."""
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}")
        return QADataset(self.name, self.path, self.examples[:limit], self.content_hash)


def resolve_dataset_path(name_or_path: str | Path, data_dir: Path | None = None) -> Path:
    """A file path as given, or a bare name (``popqa_random``) looked up in ``<data_dir>/qa/``."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".jsonl" or path.exists() or len(path.parts) > 1:
        return path
    root = data_dir or default_data_dir()
    return root / "qa" / f"{path.name}.jsonl"


def _parse_row(raw: Any, where: str) -> QAExample:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("id", "question", "golden_answers") if k not in raw]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")
    row_id, question, answers = raw["id"], raw["question"], raw["golden_answers"]
    if isinstance(row_id, int) and not isinstance(row_id, bool):
        row_id = str(row_id)
    if not isinstance(row_id, str) or not row_id:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where}: 'golden_answers' must be a non-empty list of strings")
    if not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: 'golden_answers' must contain only strings")
    aliases = tuple(a for a in answers if a.strip())
    if not aliases:
        raise DataError(f"{where}: 'golden_answers' holds only empty strings")
    metadata = raw.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    return QAExample(row_id, question.strip(), aliases, MappingProxyType(dict(metadata)))


def _content_hash(examples: Sequence[QAExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.id, ex.question, list(ex.golden_answers)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def load_dataset(
    name_or_path: str | Path, *, limit: int | None = None, data_dir: Path | None = None
) -> QADataset:
    """Read a FlashRAG-format JSONL file.

    Args:
        name_or_path: a ``.jsonl`` path, or a bare name found under ``<data_dir>/qa/``.
        limit: keep only the first ``limit`` rows (the content hash still covers the whole file).
        data_dir: root of the shared data (default :func:`default_data_dir`).

    Raises:
        DataError: the file is missing, empty, not JSONL, or a row lacks a field or has the
            wrong type; duplicate ids.
    """
    path = resolve_dataset_path(name_or_path, data_dir)
    if not path.is_file():
        hint = (
            f" (looked for a bare name under {path.parent}; set ${DATA_DIR_ENV_VAR} or pass a path)"
            if not Path(name_or_path).suffix
            else ""
        )
        raise DataError(f"dataset file not found: {path}{hint}")
    examples: list[QAExample] = []
    seen: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, where, raw in iter_jsonl(fh, path, DataError):
                example = _parse_row(raw, where)
                if example.id in seen:
                    raise DataError(
                        f"{where}: duplicate id {example.id!r} (first on line {seen[example.id]})"
                    )
                seen[example.id] = lineno
                examples.append(example)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not examples:
        raise DataError(f"dataset file is empty: {path}")
    dataset = QADataset(path.stem, path, tuple(examples), _content_hash(examples))
    if limit is not None:
        dataset = dataset.head(limit)
    return dataset
