"""A fixed, seeded sample of a dataset that shares the full file's caches.

SQuAD dev has 10,570 questions; the benchmark uses a seeded sample of it. The sample keeps the
file's name, path and content hash (cache records are keyed by row id, like ``head``), so its
closed-book and retrieval runs land in, and are reused from, the same cache files as any other
subset of that file.
"""

from __future__ import annotations

import hashlib

import numpy as np

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QADataset


def sample_dataset(dataset: QADataset, size: int, *, seed: int = 0) -> QADataset:
    """``size`` rows drawn without replacement (seeded), kept in file order.

    Raises:
        DataError: ``size`` is not positive. A size at or above the dataset's length returns the
            dataset unchanged.
    """
    if size < 1:
        raise DataError(f"sample size must be at least 1, got {size}")
    if size >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(dataset), size=size, replace=False))
    examples = tuple(dataset.examples[int(i)] for i in keep)
    return QADataset(dataset.name, dataset.path, examples, dataset.content_hash)


def ids_digest(dataset: QADataset) -> str:
    """SHA-256 of the row ids in order: records exactly which questions a run used."""
    return hashlib.sha256("\n".join(ex.id for ex in dataset).encode()).hexdigest()
