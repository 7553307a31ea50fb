"""Cached, resumable closed-book runs: per question the draft answer, its score and every signal.

A closed-book run is the label source of every gating policy (*knows* = the closed-book answer is
correct) and the expensive half of the benchmark, so it runs once per model, prompt and dataset and
is kept on disk:

- **Key.** The cache file is named by a SHA-256 over the model id, a fingerprint of the weights
  (GGUF checksum for packaged/GGUF models, weight-file digests for local checkpoints, the revision
  for hub ids), the prompt config and a rendered probe prompt (so chat templates count), the
  generation settings that change outputs, the captured layers and feature names, and the
  dataset's content hash. Change any of them and a new file is written; nothing stale is reused.
- **Append-only JSONL.** The first line is a header with the key material; each batch appends one
  line per question and is flushed and fsync'ed, so an interruption loses at most the batch in
  flight. A run resumes by skipping ids already on disk; a torn last line is dropped.
- **Scores are recomputed on read** from the stored answer, so fixing the scorer never requires
  re-running the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.evaluation.scoring import AnswerScore, score_answer

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
RUNS_DIR_ENV_VAR = "KNOWGATE_RUNS_DIR"
_PROBE_QUESTION = "What is the capital of France?"
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def default_runs_dir() -> Path:
    """``$KNOWGATE_RUNS_DIR`` if set, else ``runs/`` under the working directory (git-ignored)."""
    env = os.environ.get(RUNS_DIR_ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


@dataclass(frozen=True)
class ClosedBookRecord:
    """One question answered closed-book.

    Attributes:
        example: the labelled question (metadata included).
        dataset: the dataset's name.
        answer: the greedy draft answer.
        stop_reason: why decoding stopped (``eos``, ``newline``, ``length``).
        score: In-Accuracy / EM / F1 of ``answer`` (recomputed from the answer on every read).
        features: every named model signal of the pass (prefill and draft stages).
        prompt_tokens: length of the closed-book prompt.
        prefill_seconds: wall time of the batched prefill this question was part of.
        decode_seconds: wall time of the batched decode this question was part of.
        batch_size: rows in that batch (per-question cost is roughly seconds / batch_size).
    """

    example: QAExample
    dataset: str
    answer: str
    stop_reason: str
    score: AnswerScore
    features: Mapping[str, float]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    batch_size: int

    @property
    def id(self) -> str:
        """The question's id."""
        return self.example.id

    @property
    def correct(self) -> bool:
        """The label of every gating policy: In-Accuracy of the closed-book answer."""
        return self.score.in_accuracy


# ----------------------------------------------------------------------------------- cache key
def _sha256_path_stats(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(f"{p.name}:{p.stat().st_size}\n".encode())
        if p.suffix in {".json", ".txt", ".model"} or p.stat().st_size < (1 << 20):
            digest.update(p.read_bytes())
        else:  # large weight file: hash head and tail (full reads of GBs per run are too slow)
            with p.open("rb") as fh:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def _hash_parameters(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(lm: LanguageModel) -> str:
    """A string that changes when the model's weights change (memoised per instance).

    Packaged and GGUF models: SHA-256 of the GGUF file. Local directories: digests of the config,
    tokenizer and weight files. Hub ids: the pinned revision (``unpinned`` warns). Anything else
    (a model wrapped in memory): SHA-256 of every parameter tensor.
    """
    if lm in _FINGERPRINTS:
        return _FINGERPRINTS[lm]
    from knowgate.errors import ModelLoadError
    from knowgate.models.cache import sha256_file
    from knowgate.models.loading import resolve_source

    try:
        resolved = resolve_source(lm.config.source)
    except ModelLoadError:
        resolved = None
    if resolved is not None and resolved.model_id != lm.model_id:
        resolved = None  # the wrapped model is not what the config names
    if resolved is None:
        fingerprint = "params:" + _hash_parameters(lm.model)
    elif resolved.kind == "packaged" and resolved.packaged is not None:
        fingerprint = "gguf:" + resolved.packaged.sha256()
    elif resolved.kind == "gguf":
        fingerprint = "gguf:" + sha256_file(Path(resolved.location))
    elif resolved.kind == "local":
        files = [p for p in Path(resolved.location).iterdir() if p.is_file()]
        fingerprint = "dir:" + _sha256_path_stats(files)
    else:
        revision = lm.config.revision
        if revision is None:
            log.warning(
                "hub model %s has no pinned revision; the closed-book cache cannot detect "
                "upstream weight changes (set model.revision to a commit)",
                lm.model_id,
            )
        fingerprint = f"hub:{revision or 'unpinned'}"
    _FINGERPRINTS[lm] = fingerprint
    return fingerprint


def cache_key_material(
    lm: LanguageModel, dataset: QADataset, *, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """Everything a closed-book record depends on, as a JSON-able dict (the cache header)."""
    from knowgate.signals import feature_names

    generation = lm.config.generation
    probe = lm.format_prompt(_PROBE_QUESTION)
    return {
        "format": CACHE_FORMAT,
        "model_id": lm.model_id,
        "model_fingerprint": model_fingerprint(lm),
        "dtype": lm.config.dtype,
        "layers": list(lm.layers),
        "prompt": lm.config.prompt.model_dump(mode="json"),
        "prompt_probe_sha256": hashlib.sha256(probe.encode()).hexdigest(),
        "generation": {
            "max_new_tokens": max_new_tokens or generation.max_new_tokens,
            "stop_at_newline": generation.stop_at_newline,
        },
        "feature_names": sorted(
            n for n in feature_names(family="sparsity") + feature_names(family="uncertainty")
        ),
        "dataset": {"name": dataset.name, "content_hash": dataset.content_hash},
    }


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


def closed_book_cache_path(
    lm: LanguageModel,
    dataset: QADataset,
    cache_dir: Path | None = None,
    *,
    max_new_tokens: int | None = None,
) -> Path:
    """Where the closed-book records of ``lm`` on ``dataset`` live."""
    root = Path(cache_dir) if cache_dir is not None else default_runs_dir() / "closed_book"
    key = cache_key(cache_key_material(lm, dataset, max_new_tokens=max_new_tokens))
    return root / _slug(lm.model_id) / f"{_slug(dataset.name)}-{key[:16]}.jsonl"


# ------------------------------------------------------------------------------ reading/writing
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


def read_cache(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """Read a cache file.

    Returns:
        ``(header, raw records by id, byte offset of the end of the last complete line)``.

    Raises:
        DataError: the file is not a closed-book cache, or a line other than the last is corrupt.
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
                f"{path}:{lineno}: corrupt line in a closed-book cache; delete the file to rerun"
            )
        if header is None:
            if parsed.get("kind") != "header" or parsed.get("format") != CACHE_FORMAT:
                raise DataError(f"{path}: not a closed-book cache of format {CACHE_FORMAT}")
            header = parsed
        elif parsed.get("kind") == "record" and isinstance(parsed.get("id"), str):
            rows[parsed["id"]] = parsed
        else:
            raise DataError(f"{path}:{lineno}: unexpected line in a closed-book cache")
        good_end = end
    if header is None:
        raise DataError(f"{path}: empty closed-book cache (no header); delete it to rerun")
    return header, rows, good_end


def _record_from_row(row: Mapping[str, Any], example: QAExample, dataset: str) -> ClosedBookRecord:
    try:
        features = {str(k): float(v) for k, v in row["features"].items()}
        answer = str(row["answer"])
        return ClosedBookRecord(
            example=example,
            dataset=dataset,
            answer=answer,
            stop_reason=str(row["stop_reason"]),
            score=score_answer(answer, example.golden_answers, example.question),
            features=features,
            prompt_tokens=int(row["prompt_tokens"]),
            prefill_seconds=float(row["prefill_seconds"]),
            decode_seconds=float(row["decode_seconds"]),
            batch_size=int(row["batch_size"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"malformed closed-book record for {example.id!r}: {exc!r}") from exc


def _write_header(path: Path, material: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".closed-book-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            header = {"kind": "header", **material, "key": cache_key(material)}
            header["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            fh.write(json.dumps(header, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
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
                f"another process is running closed-book questions into {path}; wait for it "
                "(the cache is resumable) instead of running the same job twice"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def run_closed_book(
    lm: LanguageModel,
    dataset: QADataset,
    *,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> list[ClosedBookRecord]:
    """Answer every question of ``dataset`` closed-book, reusing and extending the disk cache.

    Args:
        lm: the model runner.
        dataset: the questions (a ``head(n)`` of a file shares the full file's cache).
        cache_dir: cache root (default ``runs/closed_book`` via :func:`default_runs_dir`).
        batch_size: prompts per forward pass (default from the model config).
        max_new_tokens: draft length limit (default from the model config; part of the key).
        progress: show a tqdm bar over the questions still to run.

    Returns:
        One record per question, in dataset order.
    """
    material = cache_key_material(lm, dataset, max_new_tokens=max_new_tokens)
    path = closed_book_cache_path(lm, dataset, cache_dir, max_new_tokens=max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        if path.is_file():
            header, rows, good_end = read_cache(path)
            if header.get("key") != cache_key(material):
                raise DataError(f"{path}: header does not match its key; delete the file to rerun")
            if good_end < path.stat().st_size:
                with path.open("r+b") as fh:  # cut the torn line before appending
                    fh.truncate(good_end)
        else:
            _write_header(path, material)
            rows = {}
        todo = [ex for ex in dataset if ex.id not in rows]
        size = batch_size or lm.config.generation.batch_size
        if todo:
            log.info("%s: %d cached, %d to run -> %s", dataset.name, len(rows), len(todo), path)
            bar = tqdm(
                total=len(todo),
                desc=f"closed-book {dataset.name}",
                unit="q",
                disable=not progress,
            )
            with path.open("a", encoding="utf-8") as fh, bar:
                for start in range(0, len(todo), size):
                    chunk = todo[start : start + size]
                    prompts = [lm.format_prompt(ex.question) for ex in chunk]
                    outputs = lm.run(prompts, batch_size=len(chunk), max_new_tokens=max_new_tokens)
                    lines = []
                    for ex, out in zip(chunk, outputs, strict=True):
                        row = {
                            "kind": "record",
                            "id": ex.id,
                            "answer": out.answer,
                            "stop_reason": out.draft.stop_reason,
                            "in_accuracy": score_answer(
                                out.answer, ex.golden_answers, ex.question
                            ).in_accuracy,
                            "features": out.features(),
                            "prompt_tokens": out.prompt_tokens,
                            "prefill_seconds": round(out.prefill_seconds, 6),
                            "decode_seconds": round(out.draft.seconds, 6),
                            "batch_size": len(chunk),
                        }
                        rows[ex.id] = row
                        lines.append(json.dumps(row) + "\n")
                    fh.write("".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                    bar.update(len(chunk))
    return [_record_from_row(rows[ex.id], ex, dataset.name) for ex in dataset]


def load_closed_book(path: Path, dataset: QADataset) -> list[ClosedBookRecord]:
    """Records of a finished cache file without loading the model (for analyses and benchmarks).

    Raises:
        DataError: the cache belongs to another dataset, or lacks some of its questions.
    """
    header, rows, _ = read_cache(Path(path))
    if header.get("dataset", {}).get("content_hash") != dataset.content_hash:
        raise DataError(f"{path}: cache was written for another version of {dataset.name}")
    missing = [ex.id for ex in dataset if ex.id not in rows]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} question(s) not in the cache (e.g. {missing[:3]}); "
            "finish the run with run_closed_book first"
        )
    return [_record_from_row(rows[ex.id], ex, dataset.name) for ex in dataset]
