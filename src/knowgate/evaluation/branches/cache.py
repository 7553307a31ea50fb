"""Append-only, resumable JSONL caches of answered questions (closed-book and retrieval branches).

Answering thousands of questions takes the benchmark most of its time, so every answer is kept
on disk and a run never answers a question twice:

- **Key.** A cache file holds one model's answers to one dataset under one configuration; its
  first line is a header with the key material (everything the answers depend on) and the
  SHA-256 of it. Callers name the file by that key, so a changed configuration writes a new file.
- **Append-only.** Each batch appends one line per question, flushed and fsync'ed, so an
  interruption loses at most the batch in flight. A run skips ids already on disk; a torn last
  line is dropped (and cut off before appending).
- **One writer.** An advisory lock on ``<cache>.lock`` refuses a second process running the same
  job, instead of letting both append the same questions.
- **Arrays beside the lines.** Rows may carry numeric arrays (hidden-state vectors for probes,
  per-layer signal tables) under :data:`ARRAYS_KEY`; each batch's arrays go to one ``.npz`` file
  in ``<cache>.arrays/``, written atomically *before* the batch's lines, and each line records
  its file and index. Arrays are read back with ``allow_pickle=False``: never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.jsonio import atomic_write_text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # rows with arrays (below) are an addition old readers ignore
ARRAYS_KEY = "_arrays"
"""A row returned by an :data:`AnswerBatch` may hold ``{name: ndarray}`` under this key."""

AnswerBatch = Callable[[Sequence[QAExample]], list[dict[str, Any]]]
"""Answers a batch of questions: one JSON-able row per question (``kind`` and ``id`` are added)."""


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def slug(text: str) -> str:
    """A file-name-safe form of a model id or dataset name (its last 60 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


def _iter_cache_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """Yield ``(line number, end offset, parsed line or None for a torn line)``."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            offset += len(raw)
            if not raw.endswith(b"\n"):
                yield lineno, offset, None  # torn write: the interrupted batch
                return
            try:
                yield lineno, offset, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield lineno, offset, None


def read_cache(
    path: Path, what: str = "answer"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """Read a cache file.

    Args:
        path: the cache file.
        what: the kind of cache, for error messages (``closed-book``, ``retrieval-branch``).

    Returns:
        ``(header, raw records by id, byte offset of the end of the last complete line)``.

    Raises:
        DataError: the file is not a cache, or a line other than the last is corrupt.
    """
    header: dict[str, Any] | None = None
    rows: dict[str, dict[str, Any]] = {}
    good_end = 0
    lines = list(_iter_cache_lines(path))
    for i, (lineno, end, parsed) in enumerate(lines):
        if parsed is None:
            if i == len(lines) - 1:
                log.warning("%s: dropping a torn last line (interrupted run)", path)
                break
            raise DataError(
                f"{path}:{lineno}: corrupt line in a {what} cache; delete the file to rerun"
            )
        if header is None:
            if parsed.get("kind") != "header" or parsed.get("format") != CACHE_FORMAT:
                raise DataError(f"{path}: not a {what} cache of format {CACHE_FORMAT}")
            header = parsed
        elif parsed.get("kind") == "record" and isinstance(parsed.get("id"), str):
            rows[parsed["id"]] = parsed
        else:
            raise DataError(f"{path}:{lineno}: unexpected line in a {what} cache")
        good_end = end
    if header is None:
        raise DataError(f"{path}: empty {what} cache (no header); delete it to rerun")
    return header, rows, good_end


def _write_header(path: Path, material: Mapping[str, Any]) -> None:
    header = {"kind": "header", **material, "key": cache_key(material)}
    header["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(path, json.dumps(header, sort_keys=True) + "\n")


@contextmanager
def _exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``<cache>.lock``: one writer per cache file at a time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DataError(
                f"another process is running {what} questions into {path}; wait for it "
                "(the cache is resumable) instead of running the same job twice"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def fill_cache(
    path: Path,
    material: Mapping[str, Any],
    dataset: QADataset,
    answer: AnswerBatch,
    *,
    batch_size: int,
    what: str,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Answer the questions of ``dataset`` not yet in the cache at ``path``, batch by batch.

    Args:
        path: the cache file (created with a header from ``material`` when missing).
        material: the key material; an existing file whose header key differs is refused.
        dataset: the questions.
        answer: answers one batch (one row per question, in order).
        batch_size: questions per call of ``answer``.
        what: the kind of cache, for the progress bar and error messages.
        progress: show a tqdm bar over the questions still to run.

    Returns:
        Every raw record in the file by id (a superset of ``dataset``'s ids).

    Raises:
        DataError: another process holds the cache, or the file is corrupt or keyed otherwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path, what):
        if path.is_file():
            header, rows, good_end = read_cache(path, what)
            if header.get("key") != cache_key(material):
                raise DataError(f"{path}: header does not match its key; delete the file to rerun")
            if good_end < path.stat().st_size:
                with path.open("r+b") as fh:  # cut the torn line before appending
                    fh.truncate(good_end)
        else:
            _write_header(path, material)
            rows = {}
        todo = [ex for ex in dataset if ex.id not in rows]
        if not todo:
            return rows
        log.info("%s: %d cached, %d to run -> %s", dataset.name, len(rows), len(todo), path)
        bar = tqdm(total=len(todo), desc=f"{what} {dataset.name}", unit="q", disable=not progress)
        with path.open("a", encoding="utf-8") as fh, bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                answered = answer(chunk)
                if len(answered) != len(chunk):
                    raise DataError(f"{len(answered)} answers for a batch of {len(chunk)}")
                _store_arrays(path, chunk, answered)
                lines = []
                for ex, fields in zip(chunk, answered, strict=True):
                    row = {"kind": "record", "id": ex.id, **fields}
                    rows[ex.id] = row
                    lines.append(json.dumps(row) + "\n")
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(chunk))
    return rows


def arrays_dir(path: Path) -> Path:
    """The folder holding a cache's array files."""
    return Path(f"{path}.arrays")


def _store_arrays(path: Path, chunk: Sequence[QAExample], answered: list[dict[str, Any]]) -> None:
    """Move each row's arrays into one ``.npz`` per batch; rows keep a reference to them."""
    with_arrays = [i for i, fields in enumerate(answered) if ARRAYS_KEY in fields]
    if not with_arrays:
        return
    if len(with_arrays) != len(answered):
        raise DataError("either every row of a batch carries arrays or none does")
    names = sorted(answered[0][ARRAYS_KEY])
    stacked: dict[str, np.ndarray] = {}
    for name in names:
        try:
            stacked[name] = np.stack([np.asarray(f[ARRAYS_KEY][name]) for f in answered])
        except (KeyError, ValueError) as exc:
            raise DataError(f"array {name!r} is missing or ragged in a batch: {exc}") from exc
    digest = hashlib.sha256("\n".join(ex.id for ex in chunk).encode()).hexdigest()[:20]
    folder = arrays_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"batch-{digest}.npz"
    tmp = target.with_suffix(".tmp.npz")
    with tmp.open("wb") as fh:
        np.savez(fh, **stacked)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    for index, fields in enumerate(answered):
        fields[ARRAYS_KEY] = {"file": target.name, "index": index}


def load_arrays(
    path: Path, rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Stack the arrays of ``rows`` (in order) from the cache's array files.

    Raises:
        DataError: a row has no arrays, a file is missing or corrupt, or shapes disagree.
    """
    folder = arrays_dir(Path(path))
    files: dict[str, Any] = {}
    out: dict[str, list[np.ndarray]] = {}
    try:
        for row in rows:
            ref = row.get(ARRAYS_KEY)
            if not isinstance(ref, Mapping) or "file" not in ref or "index" not in ref:
                raise DataError(f"{path}: record {row.get('id')!r} has no arrays")
            name = str(ref["file"])
            if "/" in name or "\\" in name or not name.endswith(".npz"):
                raise DataError(f"{path}: bad array file name {name!r}")
            if name not in files:
                files[name] = np.load(folder / name, allow_pickle=False)
            data = files[name]
            keys = list(names) if names is not None else sorted(data.files)
            for key in keys:
                out.setdefault(key, []).append(data[key][int(ref["index"])])
        return {k: np.stack(v) for k, v in out.items()}
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DataError(
            f"{path}: cannot read its arrays ({exc!r}); delete the cache to rerun"
        ) from exc
    finally:
        for data in files.values():
            data.close()


def load_cached_rows(
    path: Path, dataset: QADataset, *, what: str, branch: str | None = None
) -> dict[str, dict[str, Any]]:
    """The raw records of a finished cache file, checked against ``dataset`` (no model needed).

    Raises:
        DataError: not such a cache (``branch`` differs), written for another version of the
            dataset, or missing some of its questions.
    """
    header, rows, _ = read_cache(Path(path), what)
    if branch is not None and header.get("branch") != branch:
        raise DataError(f"{path}: not a {what} cache")
    if header.get("dataset", {}).get("content_hash") != dataset.content_hash:
        raise DataError(f"{path}: cache was written for another version of {dataset.name}")
    missing = [ex.id for ex in dataset if ex.id not in rows]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} question(s) not in the cache (e.g. {missing[:3]}); "
            "finish the run first"
        )
    return rows
