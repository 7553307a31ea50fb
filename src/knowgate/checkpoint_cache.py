"""Verified checkpoint cache: an expensive conversion is done once, then reloaded.

Two rooms use it, so it lives on floor 0: ``models`` caches dequantized GGUF checkpoints
(transformers dequantizes GGUF weights to float32 on every load: about 20 s for SmolLM2-135M,
over a minute for Gemma-3-270M; the cached safetensors checkpoint reloads in a second or two), and
``retrieval`` caches exported ONNX embedding models. Each entry is keyed by the SHA-256 of what
it was built from. Entries are written to a temporary directory and renamed into place, so an
interrupted build never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import platformdirs

from knowgate.errors import ModelLoadError

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "KNOWGATE_CACHE_DIR"
_MARKER = "knowgate-cache.json"
_FORMAT = 1


def default_cache_dir() -> Path:
    """``$KNOWGATE_CACHE_DIR`` if set, else the user's cache directory for knowgate."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("knowgate"))


def sha256_of(blocks: Iterable[bytes]) -> str:
    """Hex SHA-256 of a stream of byte blocks."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""

    def blocks() -> Iterable[bytes]:
        with path.open("rb") as fh:
            while block := fh.read(chunk_size):
                yield block

    return sha256_of(blocks())


def cached_checkpoint(
    checksum: str,
    cache_dir: Path,
    build: Callable[[Path], None],
    *,
    source: str,
    folder: str = "dequantized",
    verify_files: bool = False,
) -> Path:
    """Return the cache entry for ``checksum``, building it with ``build(tmpdir)`` if missing.

    Args:
        checksum: SHA-256 of the entry's source (GGUF file, exporter inputs); the entry's key.
        cache_dir: root of the cache.
        build: writes the entry's files (for GGUF: a complete ``save_pretrained`` checkpoint,
            model and tokenizer) into the directory it is given.
        source: human-readable origin, recorded in the entry's marker file.
        folder: the cache's subfolder for this kind of entry.
        verify_files: record every file's SHA-256 in the marker and check them on each hit, so
            a truncated or altered entry is rebuilt rather than loaded. Costs a read of the
            entry per call: worth it for files that are parsed, not merely mapped.
    """
    root = cache_dir / folder
    target = root / checksum
    marker = target / _MARKER
    if marker.is_file():
        try:
            meta = json.loads(marker.read_text())
            if (
                meta.get("format") == _FORMAT
                and meta.get("sha256") == checksum
                and (not verify_files or meta.get("files") == _file_checksums(target))
            ):
                return target
        except (OSError, json.JSONDecodeError):
            pass
        log.warning("cache entry %s is invalid; rebuilding it", target)
        shutil.rmtree(target, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot create the model cache directory {root}: {exc}. "
            f"Set {CACHE_ENV_VAR} or model.cache_dir to a writable directory."
        ) from exc
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        start = time.perf_counter()
        build(tmp)
        meta = {
            "format": _FORMAT,
            "sha256": checksum,
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        if verify_files:
            meta["files"] = _file_checksums(tmp)
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _file_checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but the marker, by relative POSIX path."""
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != _MARKER
    }
