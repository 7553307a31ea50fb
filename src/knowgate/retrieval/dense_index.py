"""FAISS inner-product index over unit vectors: exact, HNSW or IVF-PQ, chosen by size.

Three kinds, each the right one for a range of sizes (measured on 384-dimensional vectors in
benchmarks/results/faiss.md; thresholds in :class:`~knowgate.retrieval.config.KnowledgeBaseConfig`):

- ``flat`` (``IndexFlatIP``), up to ``exact_search_max`` vectors: one matrix-vector product per
  query, perfect recall, no build cost. Query time grows linearly with size.
- ``hnsw`` (``IndexHNSWFlat``), up to ``hnsw_max``: a graph that keeps query time near
  logarithmic at a small recall cost, but stores the raw vectors plus the graph (about
  ``4 * dim + 8 * M`` bytes a vector) and builds slowly.
- ``ivf_pq`` (``IndexIVFPQ``), above ``hnsw_max``: inverted lists over product-quantised codes
  (``m`` bytes a vector at 8 bits), for sizes whose raw vectors no longer fit in memory; recall
  drops noticeably, which is why it is the last resort.

Flat and HNSW store the raw vectors, so a growing index is converted to the next kind when an
append crosses a threshold, without re-embedding (IVF-PQ is trained on those vectors). Files are
written with FAISS's own binary format (no pickle).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from knowgate.errors import KnowledgeBaseError
from knowgate.retrieval.config import KnowledgeBaseConfig

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

IndexType = Literal["flat", "hnsw", "ivf_pq"]
_ORDER: dict[str, int] = {"flat": 0, "hnsw": 1, "ivf_pq": 2}
#: Training points per IVF centroid below which FAISS warns that k-means is unreliable.
MIN_POINTS_PER_CENTROID = 39


def index_type_for(size: int, config: KnowledgeBaseConfig) -> IndexType:
    """The index kind a base of ``size`` vectors gets under ``config``'s thresholds."""
    if size <= config.exact_search_max:
        return "flat"
    if size <= config.hnsw_max:
        return "hnsw"
    return "ivf_pq"


def ivf_nlist(size: int, config: KnowledgeBaseConfig) -> int:
    """Inverted lists for ``size`` vectors: the configured number, or ``4 * sqrt(size)``.

    The automatic value is rounded to a power of two (FAISS's guideline is 4 to 16 times the
    square root) and capped so that every centroid gets at least 39 training points.
    """
    if config.ivf_pq.nlist is not None:
        return config.ivf_pq.nlist
    guess = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(size))))
    return max(1, min(guess, size // MIN_POINTS_PER_CENTROID))


class DenseIndex:
    """A FAISS index whose row ``i`` is document ``i`` of the knowledge base.

    Args:
        index: the FAISS index (``IndexFlatIP``, ``IndexHNSWFlat`` or ``IndexIVFPQ``, inner
            product).
        config: thresholds, index parameters and runtime search breadth (``ef_search``,
            ``nprobe``).
    """

    def __init__(self, index: faiss.Index, config: KnowledgeBaseConfig) -> None:
        self.index = index
        self.config = config
        self._apply_runtime_settings()

    @classmethod
    def create(cls, dimension: int, config: KnowledgeBaseConfig) -> DenseIndex:
        """An empty exact index; :meth:`add` turns it into the right kind for its size."""
        import faiss

        return cls(faiss.IndexFlatIP(dimension), config)

    @property
    def index_type(self) -> IndexType:
        """``flat``, ``hnsw`` or ``ivf_pq``."""
        import faiss

        if isinstance(self.index, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(self.index, faiss.IndexIVFPQ):
            return "ivf_pq"
        return "flat"

    @property
    def dimension(self) -> int:
        """Vector length."""
        return int(self.index.d)

    @property
    def ivf_params(self) -> tuple[int, int, int] | None:
        """``(nlist, m, nbits)`` of an IVF-PQ index, ``None`` for the other kinds."""
        if self.index_type != "ivf_pq":
            return None
        ivf = cast("faiss.IndexIVFPQ", self.index)
        return int(ivf.nlist), int(ivf.pq.M), int(ivf.pq.nbits)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors, converting to the next kind when the new size crosses a threshold."""
        vectors = _check_vectors(vectors, self.dimension)
        target = index_type_for(len(self) + len(vectors), self.config)
        if _ORDER[target] > _ORDER[self.index_type]:
            existing = self.index.reconstruct_n(0, len(self)) if len(self) else None
            everything = vectors if existing is None else np.concatenate([existing, vectors])
            log.info(
                "converting the %s index to %s at %d vectors",
                self.index_type,
                target,
                len(everything),
            )
            self.index = _new_index(self.dimension, target, self.config, everything)
            self._apply_runtime_settings()
            self.index.add(everything)
            return
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
    def read(cls, path: Path, config: KnowledgeBaseConfig) -> DenseIndex:
        """Load a saved index; unreadable bytes raise :class:`KnowledgeBaseError`."""
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise KnowledgeBaseError(f"{path}: not a readable FAISS index ({first_line})") from exc
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise KnowledgeBaseError(f"{path}: FAISS index does not use inner product")
        if not isinstance(index, faiss.IndexFlat | faiss.IndexHNSW | faiss.IndexIVFPQ):
            raise KnowledgeBaseError(f"{path}: unsupported FAISS index type {type(index).__name__}")
        if isinstance(index, faiss.IndexIVFPQ) and not index.is_trained:
            raise KnowledgeBaseError(f"{path}: the IVF-PQ index was saved untrained")
        return cls(index, config)

    def _apply_runtime_settings(self) -> None:
        kind = self.index_type
        if kind == "hnsw":
            cast("faiss.IndexHNSW", self.index).hnsw.efSearch = self.config.hnsw.ef_search
        elif kind == "ivf_pq":
            ivf = cast("faiss.IndexIVFPQ", self.index)
            ivf.nprobe = min(self.config.ivf_pq.nprobe, int(ivf.nlist))


def _new_index(
    dimension: int, index_type: IndexType, config: KnowledgeBaseConfig, vectors: np.ndarray
) -> faiss.Index:
    """An empty index of ``index_type``; IVF-PQ is trained on (a sample of) ``vectors``."""
    import faiss

    if index_type == "flat":
        return faiss.IndexFlatIP(dimension)
    if index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dimension, config.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.hnsw.ef_construction
        return hnsw
    params = config.ivf_pq
    if dimension % params.m:
        raise KnowledgeBaseError(
            f"ivf_pq.m ({params.m}) must divide the vector dimension ({dimension}); "
            "choose a divisor such as 8, 16, 32 or 48 for 384 dimensions"
        )
    nlist = ivf_nlist(len(vectors), config)
    needed = max(nlist, 2**params.nbits)
    if len(vectors) < needed:
        raise KnowledgeBaseError(
            f"an IVF-PQ index with {nlist} lists and {params.nbits}-bit codes needs at least "
            f"{needed} vectors to train, got {len(vectors)}; raise hnsw_max or lower "
            "ivf_pq.nlist / ivf_pq.nbits"
        )
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFPQ(
        quantizer, dimension, nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT
    )
    train_n = min(len(vectors), params.train_max)
    rng = np.random.default_rng(0)  # a fixed sample: the same vectors give the same index
    sample = np.sort(rng.choice(len(vectors), size=train_n, replace=False))
    index.train(vectors[sample])
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
