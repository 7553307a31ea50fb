"""Sparsity statistics of activation vectors.

Models tend to produce denser internal representations on familiar inputs and sparser ones on
unfamiliar inputs, most visibly in the last layers at the last prompt token (Jin et al. 2026,
"Farther the Shift, Sparser the Representation", arXiv 2603.03415). The statistics below are the
measures used there. Each is a pure function of an array whose last axis is the feature dimension
and returns one value per leading index, so a ``[layers, d]`` capture gives ``[layers]`` values.

Conventions: larger ``hoyer``/``gini``/``top*_energy`` means *sparser*; larger ``l0_density``/
``magnitude_evenness`` means *denser*.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import SignalError

FloatArray = NDArray[np.float64]


def _as_activations(h: ArrayLike, name: str) -> FloatArray:
    """Validate an activation array: at least 1-D, non-empty, finite, not all zero per row."""
    arr = np.asarray(h, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise SignalError(f"{name}: expected a non-empty vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise SignalError(f"{name}: activations contain {bad} non-finite values (NaN or inf)")
    if np.any(np.all(arr == 0.0, axis=-1)):
        raise SignalError(f"{name}: an all-zero activation vector has no defined sparsity")
    return arr


def l0_density(h: ArrayLike) -> FloatArray:
    """Fraction of units whose magnitude exceeds mean(|h|) + std(|h|).

    A soft L0 "norm": dense vectors spread mass over many large units.
    """
    a = np.abs(_as_activations(h, "l0_density"))
    thresh = a.mean(axis=-1, keepdims=True) + a.std(axis=-1, keepdims=True)
    return np.asarray((a > thresh).mean(axis=-1), dtype=np.float64)


def topk_energy(h: ArrayLike, percent: float) -> FloatArray:
    """Share of the energy sum(h^2) held by the largest ``percent`` % of units (at least one unit).

    Args:
        h: activations, last axis = units.
        percent: in (0, 100].
    """
    if not 0.0 < percent <= 100.0:
        raise SignalError(f"topk_energy: percent must be in (0, 100], got {percent}")
    e = _as_activations(h, "topk_energy") ** 2
    d = e.shape[-1]
    k = max(1, math.ceil(d * percent / 100.0))
    top = -np.partition(-e, k - 1, axis=-1)[..., :k]
    return np.asarray(top.sum(axis=-1) / e.sum(axis=-1), dtype=np.float64)


def magnitude_evenness(h: ArrayLike) -> FloatArray:
    """exp(entropy of |h| / sum|h|) / d: 1 for constant magnitude, 1/d for a one-hot vector.

    The Buzas-Gibson evenness of the unit magnitudes of *one* vector (the exponentiated entropy
    is the number of "effectively used" units; divided by d it is their share). Not a rank: see
    :func:`effective_rank` for the rank of a matrix of states.
    """
    a = np.abs(_as_activations(h, "magnitude_evenness"))
    p = a / a.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(axis=-1)
    return np.asarray(np.exp(entropy) / a.shape[-1], dtype=np.float64)


def effective_rank(states: ArrayLike) -> float:
    """Effective rank of a ``[n, d]`` matrix: exp(entropy of its normalised singular values).

    Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality": 1 when
    all rows are multiples of one vector, ``min(n, d)`` when the singular values are equal. Used
    on the states of a prompt's tokens: how many directions the representation spreads over.

    Raises:
        SignalError: fewer than one row, non-finite values, or an all-zero matrix.
    """
    m = np.asarray(states, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise SignalError(f"effective_rank: expected a non-empty [n, d] matrix, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SignalError("effective_rank: the matrix contains non-finite values")
    sigma = np.linalg.svd(m, compute_uv=False)
    total = sigma.sum()
    if total <= 0:
        raise SignalError("effective_rank: an all-zero matrix has no defined rank")
    p = sigma / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def hoyer(h: ArrayLike) -> FloatArray:
    """Hoyer sparsity (sqrt(d) - L1/L2) / (sqrt(d) - 1): 0 for constant magnitude, 1 for one-hot."""
    a = _as_activations(h, "hoyer")
    d = a.shape[-1]
    if d < 2:
        raise SignalError("hoyer: needs at least 2 units")
    l1 = np.abs(a).sum(axis=-1)
    l2 = np.sqrt((a**2).sum(axis=-1))
    sd = math.sqrt(d)
    return np.asarray((sd - l1 / l2) / (sd - 1.0), dtype=np.float64)


def gini(h: ArrayLike) -> FloatArray:
    """Gini coefficient of |h|: 0 when all magnitudes are equal, (d-1)/d for one-hot."""
    a = np.sort(np.abs(_as_activations(h, "gini")), axis=-1)
    d = a.shape[-1]
    ranks = np.arange(1, d + 1, dtype=np.float64)
    weighted = ((2.0 * ranks - d - 1.0) * a).sum(axis=-1)
    return np.asarray(weighted / (d * a.sum(axis=-1)), dtype=np.float64)


def near_zero_fraction(h: ArrayLike, eps: float) -> FloatArray:
    """Fraction of units with |a| < eps: the literal sparsity of gated MLP activations."""
    if eps <= 0:
        raise SignalError(f"near_zero_fraction: eps must be > 0, got {eps}")
    a = np.abs(_as_activations(h, "near_zero_fraction"))
    return np.asarray((a < eps).mean(axis=-1), dtype=np.float64)
