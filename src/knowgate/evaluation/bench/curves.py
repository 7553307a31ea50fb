"""Accuracy against retrieval rate as a policy's threshold sweeps, and random gating's diagonal.

With both branches known, retrieving for the ``m`` questions a policy ranks least likely known
gives an exact accuracy for every ``m``: the curve from never (``m = 0``) to always (``m = n``).
Random gating at rate ``r`` has expected accuracy ``r * acc(always) + (1 - r) * acc(never)``, a
straight line between the same end points; a useful signal lies above it. Ties in a score are
broken by a seeded random order (the expected curve of a policy that cannot tell tied
questions apart). Curves are compared on a grid of retrieval rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import InputError

GRID_POINTS = 101


def rate_grid(points: int = GRID_POINTS) -> NDArray[np.float64]:
    """Retrieval rates 0, 0.01, ..., 1."""
    return np.linspace(0.0, 1.0, points)


def accuracy_curve(
    score: ArrayLike,
    cb_correct: ArrayLike,
    rag_correct: ArrayLike,
    *,
    grid: NDArray[np.float64] | None = None,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Accuracy at each retrieval rate of ``grid`` when the lowest-scoring questions retrieve.

    Args:
        score: higher = more likely known (retrieved last).
        cb_correct: closed-book correctness (0/1 or a graded score such as F1).
        rag_correct: correctness with retrieval.
        grid: retrieval rates (default :func:`rate_grid`); rate ``r`` retrieves
            ``round(r * n)`` questions.
        seed: tie-breaking order.

    Raises:
        InputError: mismatched lengths, no rows, or non-finite scores.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    cb = np.asarray(cb_correct, dtype=np.float64).ravel()
    rag = np.asarray(rag_correct, dtype=np.float64).ravel()
    if not (s.size == cb.size == rag.size) or s.size == 0:
        raise InputError(f"{s.size} scores, {cb.size} and {rag.size} outcomes")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or inf")
    grid = rate_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    n = s.size
    tie = np.random.default_rng(seed).random(n)
    order = np.lexsort((tie, s))
    rag_cum = np.concatenate([[0.0], np.cumsum(rag[order])])
    cb_tail = np.concatenate([np.cumsum(cb[order][::-1])[::-1], [0.0]])
    by_m = (rag_cum + cb_tail) / n
    return np.asarray(by_m[np.rint(grid * n).astype(np.int64)])


def random_curve(
    cb_correct: ArrayLike, rag_correct: ArrayLike, grid: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Expected accuracy of random gating at each retrieval rate."""
    grid = rate_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    cb = float(np.mean(np.asarray(cb_correct, dtype=np.float64)))
    rag = float(np.mean(np.asarray(rag_correct, dtype=np.float64)))
    return np.asarray(grid * rag + (1.0 - grid) * cb)


@dataclass(frozen=True)
class CurveComparison:
    """One curve against another over the interior of the grid (0 < rate < 1, rate >= low).

    Attributes:
        mean_difference: mean accuracy difference (this - other): the area between the curves.
        share_above: share of interior grid rates where this curve is strictly above.
        share_below: share where it is strictly below.
        min_difference: the largest shortfall (most negative difference).
        max_difference: the largest gain.
    """

    mean_difference: float
    share_above: float
    share_below: float
    min_difference: float
    max_difference: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return {k: round(float(v), 5) for k, v in self.__dict__.items()}


def compare_curves(
    curve: NDArray[np.float64],
    other: NDArray[np.float64],
    *,
    grid: NDArray[np.float64] | None = None,
    low: float = 0.0,
    tolerance: float = 1e-9,
) -> CurveComparison:
    """Compare two curves on the same grid, end points excluded (every policy meets there).

    Args:
        curve: accuracy per grid rate.
        other: the curve it is compared with.
        grid: the rates (default :func:`rate_grid` of the curves' length).
        low: compare only rates >= ``low`` (e.g. 0.8: the region where small models operate,
            since the oracle itself retrieves for most questions).
        tolerance: differences within it count as ties.
    """
    if curve.shape != other.shape or curve.size < 3:
        raise InputError("curves must share a grid of at least 3 points")
    rates = rate_grid(curve.size) if grid is None else np.asarray(grid, dtype=np.float64)
    if rates.shape != curve.shape:
        raise InputError("the grid must have one rate per curve point")
    keep = (rates > 0.0) & (rates < 1.0) & (rates >= low - 1e-12)
    if not keep.any():
        raise InputError(f"no interior grid rate at or above {low}")
    diff = (curve - other)[keep]
    return CurveComparison(
        mean_difference=float(diff.mean()),
        share_above=float(np.mean(diff > tolerance)),
        share_below=float(np.mean(diff < -tolerance)),
        min_difference=float(diff.min()),
        max_difference=float(diff.max()),
    )


def bootstrap_mean_difference(
    score: ArrayLike,
    other: ArrayLike | None,
    cb_correct: ArrayLike,
    rag_correct: ArrayLike,
    *,
    low: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean accuracy difference between two curves, with a paired bootstrap 95% interval.

    Questions are resampled with their (held-out) scores and both outcomes; each resample's
    curves are recomputed. ``other=None`` compares with random gating.

    Returns:
        ``(estimate, low, high)`` over interior grid rates >= ``low``.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    o = None if other is None else np.asarray(other, dtype=np.float64).ravel()
    cb = np.asarray(cb_correct, dtype=np.float64).ravel()
    rag = np.asarray(rag_correct, dtype=np.float64).ravel()
    grid = rate_grid()
    keep = (grid > 0) & (grid < 1) & (grid >= low - 1e-12)

    def diff(idx: NDArray[np.int64]) -> float:
        a = accuracy_curve(s[idx], cb[idx], rag[idx], grid=grid, seed=seed)
        b = (
            random_curve(cb[idx], rag[idx], grid)
            if o is None
            else accuracy_curve(o[idx], cb[idx], rag[idx], grid=grid, seed=seed)
        )
        return float((a - b)[keep].mean())

    estimate = diff(np.arange(s.size))
    if not n_boot:
        return estimate, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = [diff(rng.integers(0, s.size, s.size)) for _ in range(n_boot)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return estimate, float(lo), float(hi)
