"""Choosing and ordering demonstrations: pure functions of similarities and pool densities.

Every strategy takes the query's cosine similarity to each pool example, the pool examples'
densities (``l0_density`` of the model's last-layer state, higher = denser = easier) and a mask
of usable examples, and returns pool indices in prompt order: the first index is shown first,
the last one right before the question.

``sgicl`` follows the public code of Sparsity-Guided Curriculum In-Context Learning (Jin et al.
2026, arXiv 2603.03415; github.com/MingyuJ666/sparsityLLM, ``cot/cot.py`` and
``cot/utils/rank.py``), generalised from two demonstrations to ``k`` - see :func:`sgicl`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import InputError
from knowgate.prompting.config import DemonstrationConfig, Direction

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def difficulty_levels(values: ArrayLike, reference: ArrayLike, levels: int) -> IntArray:
    """Equal-count difficulty levels of ``values`` on the scale of ``reference`` densities.

    Level 1 holds the densest (easiest) fifth of the reference (for ``levels=5``), level
    ``levels`` the sparsest. A value's position is its mid-rank among the reference sorted from
    dense to sparse - (number strictly denser + number denser or equal) / 2 - and its level is
    ``floor(position * levels / n) + 1``, clipped to ``[1, levels]``. Applied to the reference
    itself this cuts it into equal counts (up to ties, which always share a level); a query
    denser than every reference value is level 1, one sparser than all is level ``levels``.

    Raises:
        InputError: an empty reference, non-finite values, or fewer than 2 levels.
    """
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    x = np.asarray(values, dtype=np.float64)
    if ref.size == 0:
        raise InputError("difficulty_levels: the reference is empty")
    if levels < 2:
        raise InputError(f"difficulty_levels: levels must be at least 2, got {levels}")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(x))):
        raise InputError("difficulty_levels: non-finite densities")
    n = ref.size
    strictly_denser = n - np.searchsorted(ref, x, side="right")
    denser_or_equal = n - np.searchsorted(ref, x, side="left")
    position = (strictly_denser + denser_or_equal) / 2.0
    level = np.floor(position * levels / n).astype(np.int64) + 1
    return np.clip(level, 1, levels)


def _usable(similarity: FloatArray, usable: NDArray[np.bool_] | None) -> NDArray[np.bool_]:
    mask = np.ones(similarity.size, dtype=bool) if usable is None else np.asarray(usable, bool)
    if mask.shape != similarity.shape:
        raise InputError(f"usable mask has shape {mask.shape}, expected {similarity.shape}")
    return mask


def most_similar(
    similarity: ArrayLike, count: int, usable: NDArray[np.bool_] | None = None
) -> IntArray:
    """Indices of the ``count`` most similar usable examples, most similar first.

    Ties are broken by pool order (the earlier example first).

    Raises:
        InputError: fewer than ``count`` usable examples.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    mask = _usable(sim, usable)
    idx = np.flatnonzero(mask)
    if idx.size < count:
        raise InputError(f"the pool has {idx.size} usable examples, fewer than {count}")
    order = np.lexsort((idx, -sim[idx]))
    return idx[order[:count]].astype(np.int64)


def order_by_density(
    chosen: Sequence[int] | IntArray,
    density: ArrayLike,
    similarity: ArrayLike,
    *,
    densest_first: bool,
) -> IntArray:
    """``chosen`` sorted by density (densest or sparsest first).

    Equal densities are ordered by similarity, the more similar example later (nearer the
    question), then by pool order.
    """
    d = np.asarray(density, dtype=np.float64)
    s = np.asarray(similarity, dtype=np.float64)
    idx = np.asarray(chosen, dtype=np.int64)
    key = -d[idx] if densest_first else d[idx]
    return idx[np.lexsort((idx, s[idx], key))]


def sgicl(
    similarity: ArrayLike,
    density: ArrayLike,
    pool_levels: ArrayLike,
    query_level: int,
    *,
    k: int,
    candidates: int,
    levels: int,
    direction: Direction,
    usable: NDArray[np.bool_] | None = None,
) -> IntArray:
    """The level rule of Sparsity-Guided Curriculum ICL, for ``k`` demonstrations.

    Their procedure (``cot/cot.py``, ``prepare_prompt_math500``, ``use_cot == 'curriculum'``):
    take the ``candidates`` (20) pool examples most similar to the query; with query level ``l``
    among ``levels`` (5) and ``easy = levels // 3``, ``medium = 2 * levels // 3``:

    - ``l < easy``: examples of level ``l`` and ``l + 1`` (never happens with 5 levels);
    - ``l < medium``: examples of level ``l`` only;
    - otherwise: examples of level ``l - 1`` and ``l``.

    Generalised to ``k``: the two-level branches take ``ceil(k/2)`` from level ``l`` and
    ``floor(k/2)`` from the other level; within a level the most similar come first; a level
    that runs short is filled with the most similar remaining candidates (their fallback). The
    chosen examples are then ordered by density: ``easy_to_hard`` puts the densest first (their
    code's order), ``hard_to_easy`` the sparsest first (their paper's prose).

    Raises:
        InputError: fewer than ``k`` usable examples.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    lev = np.asarray(pool_levels, dtype=np.int64)
    pool_size = int(_usable(sim, usable).sum())
    top = most_similar(sim, max(k, min(candidates, pool_size)), usable)
    easy, medium = levels // 3, 2 * levels // 3
    l = int(query_level)  # noqa: E741 - the paper's name
    if l < easy:
        wanted = [(l, (k + 1) // 2), (l + 1, k // 2)]
    elif l < medium:
        wanted = [(l, k)]
    else:
        wanted = [(max(1, l - 1), k // 2), (l, (k + 1) // 2)]
    chosen: list[int] = []
    for level, count in wanted:
        chosen.extend([int(i) for i in top if lev[i] == level and int(i) not in chosen][:count])
    for i in top:  # fill from the most similar remaining candidates
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return order_by_density(chosen[:k], density, sim, densest_first=direction == "easy_to_hard")


def query_rng(seed: int, query_key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the query text: the same draw in any batch order."""
    digest = int.from_bytes(hashlib.sha256(query_key.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


def select(
    config: DemonstrationConfig,
    *,
    similarity: ArrayLike,
    density: ArrayLike,
    pool_levels: ArrayLike,
    query_level: int,
    query_key: str,
    usable: NDArray[np.bool_] | None = None,
) -> IntArray:
    """Pool indices of one query's demonstrations, in prompt order, for any non-fixed strategy.

    Args:
        config: the strategy and its settings.
        similarity: cosine similarity of the query to each pool example.
        density: each pool example's density.
        pool_levels: each pool example's difficulty level (:func:`difficulty_levels`).
        query_level: the query's difficulty level (used by ``sgicl`` only).
        query_key: the normalised query text (seeds ``random`` and ``shuffled``).
        usable: examples that may be shown (default all).

    Raises:
        InputError: ``fixed`` (it has no pool), or fewer than ``k`` usable examples.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    k = config.k
    strategy = config.strategy
    if strategy == "random":
        idx = np.flatnonzero(_usable(sim, usable))
        if idx.size < k:
            raise InputError(f"the pool has {idx.size} usable examples, fewer than {k}")
        return query_rng(config.seed, query_key).choice(idx, size=k, replace=False).astype(np.int64)
    if strategy == "sgicl":
        return sgicl(
            sim,
            density,
            pool_levels,
            query_level,
            k=k,
            candidates=config.candidates,
            levels=config.levels,
            direction=config.direction,
            usable=usable,
        )
    top = most_similar(sim, k, usable)
    if strategy == "similarity":
        return top[::-1].copy()  # the most similar last, right before the question
    if strategy == "shuffled":
        return query_rng(config.seed, query_key).permutation(top).astype(np.int64)
    if strategy == "sparse_to_dense":
        return order_by_density(top, density, sim, densest_first=False)
    if strategy == "dense_to_sparse":
        return order_by_density(top, density, sim, densest_first=True)
    raise InputError(f"strategy {strategy!r} does not select from a pool")
