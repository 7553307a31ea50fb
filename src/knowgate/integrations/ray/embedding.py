"""Embedding a corpus in parallel actors with Ray Data.

Embedding is the cost of building a knowledge base (about 20 passages/s on two idle cores with
all-MiniLM-L6-v2); ingest, BM25, FAISS and the manifest take seconds. So only the embedding is
distributed: :func:`ray_encoder` returns an ``encode`` function for
:meth:`KnowledgeBase.build <knowgate.retrieval.KnowledgeBase.build>`, which does everything else
exactly as the local path does - same ingest, same document order, same BM25, same manifest
and checksum code. Each actor loads the embedding model once and embeds blocks of texts; rows
carry their position, so the result is in input order whatever order blocks finish in.

Vectors agree with the local path to float rounding (a batch's padding and the BLAS kernel
can differ between a worker and this process), so searches return the same passages in the same
order; ``index.faiss`` bytes can differ in the last bits, every other file is byte-identical.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from knowgate.errors import RetrievalError
from knowgate.integrations.ray.runtime import require_ray
from knowgate.retrieval import KnowledgeBaseConfig
from knowgate.schema import StrictModel

log = logging.getLogger(__name__)


class RayEmbeddingConfig(StrictModel):
    """How a corpus is spread over embedding actors.

    Attributes:
        workers: embedding actors (each loads the model once, about 0.5 GB of memory).
        cpus_per_worker: CPUs Ray reserves per actor (and the torch threads it uses).
        block_size: texts per Ray Data block, the unit handed to an actor; a multiple of the
            embedding batch size keeps the model's batches full.
    """

    workers: int = Field(default=2, ge=1, le=4096)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    block_size: int = Field(default=512, ge=1)


@dataclass
class EmbeddingStats:
    """What the last :func:`ray_encoder` call did (for the benchmark and the CLI summary)."""

    texts: int = 0
    seconds: float = 0.0
    workers: int = 0
    blocks: int = 0
    per_block: list[float] = field(default_factory=list)

    @property
    def texts_per_second(self) -> float:
        """Throughput of the whole call, Ray start-up of the actors included."""
        return self.texts / self.seconds if self.seconds > 0 else 0.0


class _EmbedActor:
    """One Ray Data actor: the embedding model, loaded once, applied to block after block."""

    def __init__(self, kb_config: dict[str, Any], threads: int) -> None:
        import torch

        from knowgate.retrieval.knowledge_base import embedder_for

        torch.set_num_threads(max(1, threads))
        self.embedder = embedder_for(KnowledgeBaseConfig.model_validate(kb_config))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.embedder.encode([str(t) for t in batch["text"]])
        return {"row": np.asarray(batch["row"], dtype=np.int64), "vector": vectors}


def ray_encoder(
    config: KnowledgeBaseConfig,
    settings: RayEmbeddingConfig | None = None,
    stats: EmbeddingStats | None = None,
) -> Callable[[list[str]], np.ndarray]:
    """An ``encode`` function that embeds texts on the Ray cluster this process is connected to.

    Args:
        config: the knowledge base's configuration; the actors embed with its model, device and
            batch size, like the local embedder.
        settings: actors, CPUs and block size.
        stats: filled with the throughput of each call.

    Returns:
        ``encode(texts) -> (len(texts), dimension)`` float32 unit vectors, in input order.
    """
    settings = settings or RayEmbeddingConfig()
    kb_config = config.model_dump(mode="json")

    def encode(texts: list[str]) -> np.ndarray:
        require_ray("data")
        import pyarrow as pa
        import ray.data

        start = time.perf_counter()
        size = settings.block_size
        blocks = [
            pa.table({"row": np.arange(i, min(i + size, len(texts))), "text": texts[i : i + size]})
            for i in range(0, len(texts), size)
        ]
        dataset = ray.data.from_arrow(blocks).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={
                "kb_config": kb_config,
                "threads": max(1, round(settings.cpus_per_worker)),
            },
            batch_size=size,
            batch_format="numpy",
            concurrency=settings.workers,
            num_cpus=settings.cpus_per_worker,
        )
        out: np.ndarray | None = None
        seen = np.zeros(len(texts), dtype=bool)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows, vectors = batch["row"], np.asarray(batch["vector"], dtype=np.float32)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
            seen[rows] = True
        if out is None or not seen.all():
            missing = int((~seen).sum())
            raise RetrievalError(f"Ray embedding lost {missing} of {len(texts)} texts")
        if stats is not None:
            stats.texts = len(texts)
            stats.seconds = time.perf_counter() - start
            stats.workers = settings.workers
            stats.blocks = len(blocks)
        log.info("embedded %d texts on Ray in %.1f s", len(texts), time.perf_counter() - start)
        return out

    return encode
