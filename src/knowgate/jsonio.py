"""Small file helpers shared by every room that persists or reads JSON Lines.

Persisted state is written atomically (a temporary file in the same directory, fsync'ed, then
renamed over the target), so a crash leaves the old file or the new one, never half of one.
JSONL readers report the file and line of a bad row instead of a bare decode error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (created world-readable, like a normal file)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (created world-readable, like a normal file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def iter_jsonl(
    lines: Iterable[str], source: str | Path, error: type[Exception]
) -> Iterator[tuple[int, str, Any]]:
    """Parse JSON Lines, skipping blank lines.

    Yields:
        ``(line_number, where, value)`` with ``where`` = ``"<source>:<line>"`` for messages.

    Raises:
        error: a line is not valid JSON (the message names the file and line).
    """
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from exc
        yield lineno, where, value
