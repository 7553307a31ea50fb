"""FAISS inner-product index over unit vectors: exact when small, HNSW when large.

Exact search (``IndexFlatIP``) costs one matrix-vector product per query, which is fast up to a
few hundred thousand vectors and has perfect recall. Above a threshold an HNSW graph
(``IndexHNSWFlat``) keeps query time logarithmic at a small recall cost. Both store the raw
vectors, so an exact index can be converted to HNSW when an append crosses the threshold, without
re-embedding. Files are written with FAISS's own binary format (no pickle).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval.config import HnswConfig

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

IndexType = Literal["flat", "hnsw"]


class DenseIndex:
    """A FAISS index whose row ``i`` is document ``i`` of the knowledge base.

    Args:
        index: the FAISS index (``IndexFlatIP`` or ``IndexHNSWFlat`` with inner product).
        hnsw: HNSW parameters (used for HNSW indexes, and for converting a flat one).
    """

    def __init__(self, index: faiss.Index, hnsw: HnswConfig) -> None:
        self.index = index
        self.hnsw = hnsw
        if self.index_type == "hnsw":
            self._hnsw_struct().efSearch = hnsw.ef_search

    @classmethod
    def create(cls, dimension: int, size: int, exact_max: int, hnsw: HnswConfig) -> DenseIndex:
        """An empty index of the right type for ``size`` vectors."""
        return cls(_new_index(dimension, "hnsw" if size > exact_max else "flat", hnsw), hnsw)

    @property
    def index_type(self) -> IndexType:
        """``flat`` or ``hnsw``."""
        import faiss

        return "hnsw" if isinstance(self.index, faiss.IndexHNSW) else "flat"

    @property
    def dimension(self) -> int:
        """Vector length."""
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, exact_max: int) -> None:
        """Append vectors, converting an exact index to HNSW if it grows past ``exact_max``."""
        vectors = _check_vectors(vectors, self.dimension)
        if self.index_type == "flat" and len(self) + len(vectors) > exact_max:
            existing = self.index.reconstruct_n(0, len(self)) if len(self) else None
            log.info("converting exact index to HNSW at %d vectors", len(self) + len(vectors))
            self.index = _new_index(self.dimension, "hnsw", self.hnsw)
            if existing is not None:
                self.index.add(existing)
        self.index.add(vectors)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products and row ids per query; ids are -1 where fewer exist."""
        vectors = _check_vectors(vectors, self.dimension)
        k = max(1, min(k, len(self)))
        scores, ids = self.index.search(vectors, k)
        return scores, ids

    def write(self, path: Path) -> None:
        """Save in FAISS's binary format."""
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def read(cls, path: Path, hnsw: HnswConfig) -> DenseIndex:
        """Load a saved index; unreadable bytes raise :class:`KnowledgeBaseError`."""
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise KnowledgeBaseError(f"{path}: not a readable FAISS index ({first_line})") from exc
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise KnowledgeBaseError(f"{path}: FAISS index does not use inner product")
        if not isinstance(index, faiss.IndexFlat | faiss.IndexHNSW):
            raise KnowledgeBaseError(f"{path}: unsupported FAISS index type {type(index).__name__}")
        return cls(index, hnsw)

    def _hnsw_struct(self) -> faiss.HNSW:
        return cast("faiss.IndexHNSW", self.index).hnsw


def _new_index(dimension: int, index_type: IndexType, hnsw: HnswConfig) -> faiss.Index:
    import faiss

    if index_type == "flat":
        return faiss.IndexFlatIP(dimension)
    index = faiss.IndexHNSWFlat(dimension, hnsw.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = hnsw.ef_construction
    index.hnsw.efSearch = hnsw.ef_search
    return index


def _check_vectors(vectors: np.ndarray, dimension: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise KnowledgeBaseError(
            f"vectors of shape {vectors.shape} do not fit an index of dimension {dimension}"
        )
    if not np.isfinite(vectors).all():
        raise KnowledgeBaseError("vectors contain NaN or infinite values")
    return vectors
