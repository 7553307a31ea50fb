"""Held-out demonstration pools: worked examples drawn from questions that are never evaluated.

Measuring a demonstration strategy on a dataset needs examples from the same distribution, and
an evaluated question must never be its own demonstration (the answer would be in the prompt).
So each dataset is split: a seeded sample is evaluated, and the pool is drawn from the rest of
the same file minus every question whose normalised text is evaluated in *any* dataset of the
run (``popqa_random`` and ``popqa_h2`` share 64 questions under different ids, so a question
evaluated in one is kept out of the other's pool). Questions are compared by
:func:`knowgate.text.normalize_question`, the same key that groups cross-validation folds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QADataset
from knowgate.evaluation.sampling import sample_dataset
from knowgate.prompting.pool import Demonstration, DemonstrationPool


def evaluation_samples(
    datasets: Sequence[QADataset], size: int, *, seed: int = 0
) -> list[QADataset]:
    """A seeded sample of ``size`` questions per dataset, no question evaluated twice.

    Each dataset is sampled with :func:`~knowgate.evaluation.sampling.sample_dataset`; a row
    whose normalised question was already sampled from an earlier dataset (or earlier in the
    same one) is dropped, so the samples are disjoint by question text and a paired bootstrap
    over rows resamples independent questions.
    """
    seen: set[str] = set()
    out = []
    for dataset in datasets:
        sample = sample_dataset(dataset, size, seed=seed)
        keep = []
        for ex in sample:
            if ex.group not in seen:
                seen.add(ex.group)
                keep.append(ex)
        out.append(QADataset(dataset.name, dataset.path, tuple(keep), dataset.content_hash))
    return out


def evaluated_questions(datasets: Iterable[QADataset]) -> set[str]:
    """Normalised text of every question of ``datasets``."""
    return {ex.group for dataset in datasets for ex in dataset}


def held_out_pool(
    source: QADataset,
    evaluated: set[str],
    *,
    size: int | None = None,
    seed: int = 0,
) -> DemonstrationPool:
    """A pool from ``source``'s rows whose question is not in ``evaluated``.

    Each row becomes ``(question, first gold alias)``; a question repeated in the file is kept
    once (its first row); datasets guarantee a non-empty first alias. With ``size``, a seeded
    sample of that many rows, in file order.

    Raises:
        DataError: no row is left, or fewer than ``size``.
    """
    rows = []
    seen: set[str] = set()
    for ex in source:
        if ex.group in evaluated or ex.group in seen:
            continue
        seen.add(ex.group)
        rows.append(ex)
    if size is not None:
        if size > len(rows):
            raise DataError(
                f"{source.name}: {len(rows)} questions are left for a pool, fewer than {size}"
            )
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=size, replace=False))
        rows = [rows[int(i)] for i in keep]
    if not rows:
        raise DataError(f"{source.name}: every question is evaluated; nothing is left for a pool")
    pool = DemonstrationPool(
        [Demonstration(ex.question, ex.golden_answers[0]) for ex in rows],
        source=f"{source.name} (held out)",
    )
    check_disjoint(pool, evaluated)
    return pool


def check_disjoint(pool: DemonstrationPool, evaluated: set[str]) -> None:
    """Raise when the pool holds an evaluated question (compared by normalised text).

    Raises:
        DataError: naming the first few overlapping questions.
    """
    overlap = [key for key in pool.keys if key in evaluated]
    if overlap:
        raise DataError(
            f"the demonstration pool {pool.source} holds {len(overlap)} evaluated question(s), "
            f"e.g. {overlap[:3]}"
        )
