"""A pool of worked examples that demonstrations are chosen from.

A pool file is JSON Lines, one ``{"question": ..., "answer": ...}`` object per line. Whitespace
is collapsed on load (a newline inside a question would break the ``Q:/A:`` layout), and two
examples with the same normalised question are an error: the pool is keyed by question. The
content hash covers the normalised examples in order, so caches of pool scores follow the
content, not the file name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from knowgate.errors import DataError
from knowgate.jsonio import atomic_write_text, iter_jsonl
from knowgate.text import normalize_question


@dataclass(frozen=True)
class Demonstration:
    """One worked question/answer pair shown before the real question."""

    question: str
    answer: str


def _clean(value: object, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {field!r} must be a string, got {type(value).__name__}")
    text = " ".join(value.split())
    if not text:
        raise DataError(f"{where}: {field!r} is empty")
    return text


class DemonstrationPool:
    """Worked examples, in order, with a content hash.

    Args:
        examples: the examples (whitespace is collapsed).
        source: where they came from, for error messages.

    Raises:
        DataError: no examples, an empty question or answer, or a repeated question.
    """

    def __init__(self, examples: Sequence[Demonstration], *, source: str = "<memory>") -> None:
        """Validate and normalise ``examples``."""
        if not examples:
            raise DataError(f"{source}: a demonstration pool needs at least one example")
        cleaned: list[Demonstration] = []
        seen: dict[str, int] = {}
        for i, ex in enumerate(examples, start=1):
            where = f"{source}: example {i}"
            q = _clean(ex.question, "question", where)
            a = _clean(ex.answer, "answer", where)
            key = normalize_question(q)
            if key in seen:
                raise DataError(f"{where}: repeats the question of example {seen[key]} ({q!r})")
            seen[key] = i
            cleaned.append(Demonstration(q, a))
        self.examples: tuple[Demonstration, ...] = tuple(cleaned)
        self.source = source
        self.keys: tuple[str, ...] = tuple(seen)
        self._position = {key: i - 1 for key, i in seen.items()}
        digest = hashlib.sha256()
        for ex in self.examples:
            digest.update(json.dumps([ex.question, ex.answer]).encode())
            digest.update(b"\n")
        self.content_hash = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Demonstration]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> Demonstration:
        return self.examples[index]

    def index_of(self, question: str) -> int | None:
        """Position of the example whose normalised question equals ``question``'s, if any."""
        return self._position.get(normalize_question(question))

    @classmethod
    def load(cls, path: str | Path) -> DemonstrationPool:
        """Read a JSON Lines pool file.

        Raises:
            DataError: the file is missing, not JSONL, a line is not exactly
                ``{"question", "answer"}``, or the pool is invalid (see the class).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"demonstration pool file not found: {path}")
        examples = []
        try:
            with path.open(encoding="utf-8") as fh:
                for _, where, row in iter_jsonl(fh, path, DataError):
                    if not isinstance(row, dict) or set(row) != {"question", "answer"}:
                        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                        raise DataError(f"{where}: expected keys question and answer, got {keys}")
                    examples.append(
                        Demonstration(
                            _clean(row["question"], "question", where),
                            _clean(row["answer"], "answer", where),
                        )
                    )
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        return cls(examples, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write the pool as JSON Lines (atomically)."""
        lines = (
            json.dumps({"question": ex.question, "answer": ex.answer}, ensure_ascii=False)
            for ex in self.examples
        )
        atomic_write_text(path, "".join(line + "\n" for line in lines))
