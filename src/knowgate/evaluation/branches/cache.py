"""The branch-runner template and its append-only, resumable JSONL cache.

The benchmark answers every question more than once - closed-book with every signal, with
retrieval, and with the peers' extra calls - and each of these *branches* is a
:class:`BranchRunner`: four pieces, nothing else.

- **Key material** (:meth:`BranchRunner.key_material`): everything a row depends on (model,
  weights fingerprint, prompts, generation settings, dataset content hash, branch settings), a
  JSON-able dict. The cache file is ``<runs>/<folder>/<model>/<dataset>-<key16>.jsonl``, where
  ``key16`` starts the SHA-256 of that dict; its first line is a header with the material and the
  full key. Change anything the answers depend on and a new file is written.
- **Answer a batch** (:meth:`BranchRunner.answer_batch`): one JSON-able row per question.
- **Parse a record** (:meth:`BranchRunner.parse_record`): a raw row back into a typed record;
  scores are recomputed here from the stored answer, so fixing the scorer never needs the model.
- **Load without a model** (:meth:`BranchRunner.load`): a finished cache file read for analyses.

The cache itself:

- **Append-only.** Each batch appends one line per question, flushed and fsync'ed, so an
  interruption loses at most the batch in flight. A run skips ids already on disk; a torn last
  line is dropped (and cut off before appending).
- **One writer.** An advisory lock on ``<cache>.lock`` refuses a second process running the same
  job, instead of letting both append the same questions. Batches answered elsewhere (a
  :class:`BatchExecutor`: Ray actors, each with its own model) come back to this process, which
  appends them in batch order exactly as it appends its own.
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from tqdm.auto import tqdm

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.jsonio import atomic_write_text

if TYPE_CHECKING:
    from knowgate.models import ModelConfig

log = logging.getLogger(__name__)

RUNS_DIR_ENV_VAR = "KNOWGATE_RUNS_DIR"

CACHE_FORMAT = 1  # rows with arrays (below) are an addition old readers ignore
ARRAYS_KEY = "_arrays"
"""A row returned by an :data:`AnswerBatch` may hold ``{name: ndarray}`` under this key."""

AnswerBatch = Callable[[Sequence[QAExample]], list[dict[str, Any]]]
"""Answers a batch of questions: one JSON-able row per question (``kind`` and ``id`` are added)."""
AnswerBatches = Callable[[Sequence[Sequence[QAExample]]], Iterable[list[dict[str, Any]]]]
"""Answers many batches, yielding each batch's rows in batch order as they are ready."""


def default_runs_dir() -> Path:
    """``$KNOWGATE_RUNS_DIR`` if set, else ``runs/`` under the working directory (git-ignored)."""
    env = os.environ.get(RUNS_DIR_ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


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
    answer_batches: AnswerBatches | None = None,
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
        answer_batches: answers the batches elsewhere instead of ``answer`` (e.g. in Ray
            actors), yielding them in order; this process still writes every line, so the
            batches, rows and array files are those of the local path.

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
        chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
        results = answer_batches(chunks) if answer_batches is not None else map(answer, chunks)
        bar = tqdm(total=len(todo), desc=f"{what} {dataset.name}", unit="q", disable=not progress)
        with path.open("a", encoding="utf-8") as fh, bar:
            for chunk, answered in zip(chunks, results, strict=True):
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
    written_for = header.get("dataset")
    if not isinstance(written_for, Mapping) or "content_hash" not in written_for:
        raise DataError(f"{path}: the header names no dataset content hash")
    if written_for["content_hash"] != dataset.content_hash:
        raise DataError(f"{path}: cache was written for another version of {dataset.name}")
    missing = [ex.id for ex in dataset if ex.id not in rows]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} question(s) not in the cache (e.g. {missing[:3]}); "
            "finish the run first"
        )
    return rows


RecordT = TypeVar("RecordT")


class BranchModel(Protocol):
    """What every branch reads of its model: the identity its cache folder is named by, and the
    config (batch size). A branch narrows it to what it runs: a local
    :class:`~knowgate.models.LanguageModel`, or also a served
    :class:`~knowgate.models.RemoteModel`.
    """  # noqa: D205

    model_id: str
    config: ModelConfig


BranchFactory = Callable[[Any], "BranchRunner[Any]"]
"""Builds a branch around a model loaded elsewhere; picklable (a partial of a module function)."""


class BatchExecutor(Protocol):
    """Answers a branch's batches outside this process (Ray actors, each with its own model).

    :meth:`BranchRunner.run` hands it the batches still to run; the caller appends what it
    yields to the cache, so a cache filled through an executor is read by the local path and
    the other way round.
    """

    def answer_batches(
        self,
        branch: BranchRunner[Any],
        dataset: QADataset,
        chunks: Sequence[Sequence[QAExample]],
    ) -> Iterator[list[dict[str, Any]]]:
        """Each chunk's rows, as :meth:`BranchRunner.answer_batch` returns them, in order."""
        ...


class BranchRunner(ABC, Generic[RecordT]):
    """One branch of the benchmark: a cached, resumable model run over a dataset's questions.

    A subclass names its cache :attr:`folder` and implements the four pieces of the module
    docstring; :meth:`run` and :meth:`load` are shared. Instances hold the model and the
    branch's settings (a knowledge base and ``k``, a sample count), which is what the key
    material reads.

    Attributes:
        folder: the cache root's sub-folder under the runs directory.
        what: the branch in messages and progress bars.
        branch: the header's ``branch`` value that :meth:`load` checks (``None``: not checked,
            for caches whose key material has no ``branch`` entry).
    """

    folder: ClassVar[str]
    what: ClassVar[str]
    branch: ClassVar[str | None] = None

    lm: BranchModel

    def __init__(self, lm: BranchModel) -> None:
        self.lm = lm

    @abstractmethod
    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """Everything a row depends on, as a JSON-able dict (the cache header).

        It must hold ``dataset: {"name", "content_hash"}`` (:meth:`load` checks the file against
        the dataset with it) and, when :attr:`branch` is set, ``branch``.
        """

    @abstractmethod
    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """Answer one batch: one JSON-able row per question, in order."""

    @classmethod
    @abstractmethod
    def parse_record(cls, row: Mapping[str, Any], example: QAExample, dataset: str) -> RecordT:
        """A raw cached row as a typed record (scores recomputed from the stored answer).

        Raises:
            DataError: the row lacks a field or has the wrong type.
        """

    def replica(self) -> BranchFactory:
        """How to build this branch around another copy of its model (for a :class:`BatchExecutor`).

        Everything but the model goes into the factory (settings, a knowledge base's
        directory); the executor loads the model where the factory runs.

        Raises:
            ConfigError: the branch cannot run elsewhere (a served model has no local pass).
        """
        raise ConfigError(f"the {self.what} branch of {self.lm.model_id} cannot run elsewhere")

    def cache_path(self, dataset: QADataset, cache_dir: Path | None = None) -> Path:
        """Where this branch's rows of ``dataset`` live (``cache_dir``: the branch's root)."""
        return self._path(cache_key(self.key_material(dataset)), dataset, cache_dir)

    def _path(self, key: str, dataset: QADataset, cache_dir: Path | None) -> Path:
        root = Path(cache_dir) if cache_dir is not None else default_runs_dir() / self.folder
        return root / slug(self.lm.model_id) / f"{slug(dataset.name)}-{key[:16]}.jsonl"

    def run(
        self,
        dataset: QADataset,
        *,
        cache_dir: Path | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        executor: BatchExecutor | None = None,
    ) -> list[RecordT]:
        """Answer the questions of ``dataset`` not yet cached; every record, in dataset order.

        Args:
            dataset: the questions (a ``head`` or sample of a file shares the file's cache).
            cache_dir: the branch's cache root (default ``<runs dir>/<folder>``).
            batch_size: questions per :meth:`answer_batch` (default from the model config).
            progress: show a tqdm bar over the questions still to run.
            executor: answer the batches there (e.g. Ray actors) instead of with this
                process's model; the batches and the file written are the same.
        """
        material = self.key_material(dataset)
        rows = fill_cache(
            self._path(cache_key(material), dataset, cache_dir),
            material,
            dataset,
            self.answer_batch,
            batch_size=batch_size or self.lm.config.generation.batch_size,
            what=self.what,
            progress=progress,
            answer_batches=None
            if executor is None
            else partial(executor.answer_batches, self, dataset),
        )
        return [self.parse_record(rows[ex.id], ex, dataset.name) for ex in dataset]

    @classmethod
    def load(cls, path: Path, dataset: QADataset) -> list[RecordT]:
        """Records of a finished cache file, without a model.

        Raises:
            DataError: not this branch's cache, written for another version of the dataset, or
                missing some of its questions.
        """
        rows = load_cached_rows(path, dataset, what=cls.what, branch=cls.branch)
        return [cls.parse_record(rows[ex.id], ex, dataset.name) for ex in dataset]
