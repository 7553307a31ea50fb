"""Pool scores - each example's density and embedding - computed once per model and cached.

Scoring a pool runs the model once per example (one prefill of the example's sparsity prompt)
and the embedding model once, so it is cached on disk:

- **Key.** The file is named by a SHA-256 over the key material: the model's identity (id,
  weights fingerprint, dtype), how density is read (metric, site, layer, position, the sparsity
  prompt and a rendered probe of it), the embedding model, and the pool's content hash and size.
  Change any of them and another file is used; nothing stale is reused.
- **Atomic.** A ``.npz`` archive (numeric arrays and the key as a JSON string, no object
  arrays) is written to a temporary file and renamed into place.
- **Validated on load.** Read with ``allow_pickle=False`` (never unpickled); the stored key must
  equal the expected one, the arrays must have the pool's length, be finite, densities in
  [0, 1] and embeddings unit vectors. A file that fails is ignored (with a warning) and
  recomputed, never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError
from knowgate.jsonio import atomic_write_bytes

log = logging.getLogger(__name__)

SCORES_FORMAT = 1
DensityFn = Callable[[Sequence[str]], NDArray[np.float64]]
"""Questions -> the model's density on each question's sparsity prompt."""
EmbedFn = Callable[[Sequence[str]], NDArray[np.float32]]
"""Texts -> unit-norm embedding rows."""


@dataclass(frozen=True)
class PoolScores:
    """Per-example density (higher = denser = easier) and unit-norm question embedding."""

    density: NDArray[np.float64]
    embeddings: NDArray[np.float32]


def material_key(material: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def scores_path(cache_dir: Path, material: Mapping[str, Any]) -> Path:
    """``<cache_dir>/pool-<pool hash 12>-<key 16>.npz``."""
    pool_hash = str(material.get("pool", {}).get("sha256", "unknown"))[:12]
    return Path(cache_dir) / f"pool-{pool_hash}-{material_key(material)[:16]}.npz"


def _problems(material: Mapping[str, Any], stored: Any, scores: PoolScores, size: int) -> list[str]:
    problems = []
    if stored != json.loads(json.dumps(material, sort_keys=True)):
        problems.append("its key material differs from this model, prompt and pool")
    d, e = scores.density, scores.embeddings
    if d.shape != (size,):
        problems.append(f"density has shape {d.shape}, expected ({size},)")
    elif not np.all(np.isfinite(d)) or d.min() < 0.0 or d.max() > 1.0:
        problems.append("density values are not finite shares in [0, 1]")
    if e.ndim != 2 or e.shape[0] != size or e.shape[1] < 1:
        problems.append(f"embeddings have shape {e.shape}, expected ({size}, d)")
    elif not np.all(np.isfinite(e)) or not np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3):
        problems.append("embeddings are not finite unit vectors")
    return problems


def load_scores(path: Path, material: Mapping[str, Any], size: int) -> PoolScores | None:
    """The cached scores at ``path`` if present and valid for ``material``, else ``None``.

    An unreadable or invalid file is reported with a warning and treated as missing.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = json.loads(str(archive["key"][()]))
            scores = PoolScores(
                np.asarray(archive["density"], dtype=np.float64),
                np.asarray(archive["embeddings"], dtype=np.float32),
            )
            fmt = int(archive["format"][()])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable pool-score cache %s (%s); recomputing", path, exc)
        return None
    problems = [] if fmt == SCORES_FORMAT else [f"format {fmt}, expected {SCORES_FORMAT}"]
    problems += _problems(material, stored, scores, size)
    if problems:
        log.warning("ignoring invalid pool-score cache %s: %s", path, "; ".join(problems))
        return None
    return scores


def save_scores(path: Path, material: Mapping[str, Any], scores: PoolScores) -> None:
    """Write ``scores`` with their key material to ``path`` atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.asarray(SCORES_FORMAT, dtype=np.int64),
        key=np.asarray(json.dumps(material, sort_keys=True)),
        density=np.asarray(scores.density, dtype=np.float64),
        embeddings=np.asarray(scores.embeddings, dtype=np.float32),
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_or_score(
    questions: Sequence[str],
    material: Mapping[str, Any],
    cache_dir: Path,
    *,
    density_fn: DensityFn,
    embed_fn: EmbedFn,
) -> tuple[PoolScores, bool]:
    """Cached scores of the pool's ``questions``, computed (and cached) when missing or invalid.

    Returns:
        ``(scores, computed)``: ``computed`` is true when the model ran.
    """
    path = scores_path(cache_dir, material)
    cached = load_scores(path, material, len(questions))
    if cached is not None:
        return cached, False
    log.info("scoring %d pool examples (density and embedding) into %s", len(questions), path)
    scores = PoolScores(
        np.asarray(density_fn(questions), dtype=np.float64),
        np.asarray(embed_fn(questions), dtype=np.float32),
    )
    problems = _problems(material, json.loads(json.dumps(material)), scores, len(questions))
    if problems:
        raise DataError(f"pool scores are invalid: {'; '.join(problems)}")
    save_scores(path, material, scores)
    return scores, True
