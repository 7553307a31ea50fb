"""Separation statistics: how well one signal tells familiar from unfamiliar inputs.

Every comparison has a *positive* group (familiar: a real entity, a taught fact, a question the
model answers correctly) and a *negative* group. For one signal it reports

- the AUROC, P(signal of a positive > signal of a negative) (0.5 = no information, below 0.5 =
  the signal is *lower* on familiar inputs), from :func:`sklearn.metrics.roc_auc_score`;
- Cohen's d, the difference of the group means in units of the pooled standard deviation;
- the relative shift of the unfamiliar mean, ``(mean_neg - mean_pos) / |mean_pos|``, the unit in
  which Jin et al. 2026 report their (small, 0.3-0.7%) sparsity effects;

each with a 95% percentile interval from a *cluster* bootstrap: observations that share a
cluster (the same fabricated/real pair, the same fictional entity asked several ways) are
resampled together, because they are not independent. The bootstrap weights every observation by
how often its cluster was drawn, which lets one sort per signal serve all resamples; the weighted
AUROC it uses is tested against ``roc_auc_score(sample_weight=...)``.

Probes and feature-set comparisons are cross-fitted with scikit-learn (a standardised logistic
regression, grouped stratified folds), so no reported AUROC comes from data its model was fitted
on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import InputError

FloatArray = NDArray[np.float64]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% bootstrap interval (``nan`` bounds when not bootstrapped)."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able form, rounded to 4 decimals."""
        return {
            "estimate": _round(self.estimate),
            "low": _round(self.low),
            "high": _round(self.high),
        }

    def format(self, digits: int = 3) -> str:
        """``0.612 [0.581, 0.640]``."""
        if np.isnan(self.low):
            return f"{self.estimate:.{digits}f}"
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Separation:
    """How one signal separates a positive (familiar) from a negative (unfamiliar) group.

    Attributes:
        n_positive: observations in the positive group.
        n_negative: observations in the negative group.
        auroc: P(positive > negative), with its interval.
        cohens_d: (mean_pos - mean_neg) / pooled SD, with its interval.
        relative_shift: (mean_neg - mean_pos) / |mean_pos|, with its interval.
        mean_positive: mean of the positive group.
        mean_negative: mean of the negative group.
    """

    n_positive: int
    n_negative: int
    auroc: Interval
    cohens_d: Interval
    relative_shift: Interval
    mean_positive: float
    mean_negative: float

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON/CSV-able form."""
        out: dict[str, Any] = {"n_positive": self.n_positive, "n_negative": self.n_negative}
        for name in ("auroc", "cohens_d", "relative_shift"):
            interval: Interval = getattr(self, name)
            out[name] = _round(interval.estimate)
            out[f"{name}_low"] = _round(interval.low)
            out[f"{name}_high"] = _round(interval.high)
        out["mean_positive"] = _round(self.mean_positive, 6)
        out["mean_negative"] = _round(self.mean_negative, 6)
        return out


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits)) if np.isfinite(value) else float("nan")


def _as_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise InputError(
            f"scores and labels must be 1-D and equally long, got {s.shape}, {y.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain non-finite values")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise InputError("labels must be boolean or 0/1")
        y = y.astype(bool)
    if y.all() or not y.any():
        raise InputError("both groups need at least one observation")
    return s, y


def cluster_bootstrap_weights(
    groups: ArrayLike | None, n: int, n_boot: int, seed: int
) -> NDArray[np.int64]:
    """``[n_boot, n]`` resampling weights: each observation counts as often as its cluster is drawn.

    Args:
        groups: cluster label per observation (``None``: every observation is its own cluster).
        n: number of observations.
        n_boot: resamples.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse = np.arange(n)
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise InputError(f"groups must have one entry per observation ({n}), got {g.shape}")
        inverse = np.unique(g, return_inverse=True)[1].reshape(-1)
    n_groups = int(inverse.max()) + 1
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return np.asarray(counts[:, inverse], dtype=np.int64)


def weighted_auroc(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike) -> FloatArray:
    """AUROC of ``scores`` for each row of observation ``weights`` (ties count one half).

    Equal to ``roc_auc_score(labels, scores, sample_weight=w)`` for every row ``w``, computed
    for all rows from one sort; ``nan`` where a row gives a group zero weight.

    Args:
        scores: ``[n]`` signal values.
        labels: ``[n]`` booleans, True for the positive group.
        weights: ``[n]`` or ``[B, n]`` non-negative weights.
    """
    s, y = _as_inputs(scores, labels)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != s.shape[0]:
        raise InputError(f"weights must be [B, {s.shape[0]}], got {w.shape}")
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[:, order]
    _, starts = np.unique(s, return_index=True)
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _weighted_moments(
    s: FloatArray, mask: NDArray[np.bool_], w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted count, mean and (frequency-weighted, n-1) variance of ``s[mask]`` per row."""
    wm = w * mask
    count = wm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (wm * s).sum(axis=1) / count
        var = (wm * (s - mean[:, None]) ** 2).sum(axis=1) / (count - 1)
    return count, mean, var


def _effects(s: FloatArray, y: NDArray[np.bool_], w: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Cohen's d and the relative shift of the negative mean, per weight row."""
    n1, m1, v1 = _weighted_moments(s, y, w)
    n0, m0, v0 = _weighted_moments(s, ~y, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(((n1 - 1) * v1 + (n0 - 1) * v0) / (n1 + n0 - 2))
        d = np.where(pooled > 0, (m1 - m0) / pooled, 0.0)
        shift = (m0 - m1) / np.abs(m1)
    return d, shift


def _interval(estimate: float, draws: FloatArray) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    alpha = (1.0 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high))


def separation(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    weights: NDArray[np.int64] | None = None,
) -> Separation:
    """AUROC, Cohen's d and relative shift of one signal, with cluster-bootstrap intervals.

    Args:
        scores: ``[n]`` signal values.
        labels: ``[n]`` True for the positive (familiar) group.
        groups: cluster per observation, resampled together (``None``: independent).
        n_boot: bootstrap resamples (0: point estimates only).
        seed: bootstrap seed.
        weights: precomputed :func:`cluster_bootstrap_weights` (share them across signals so
            every signal is judged on the same resamples); overrides ``groups``/``n_boot``.

    Raises:
        InputError: shapes disagree, values are not finite, or a group is empty.
    """
    from sklearn.metrics import roc_auc_score

    s, y = _as_inputs(scores, labels)
    auroc = float(roc_auc_score(y, s))
    d, shift = _effects(s, y, np.ones((1, s.shape[0])))
    if weights is None and n_boot > 0:
        weights = cluster_bootstrap_weights(groups, s.shape[0], n_boot, seed)
    if weights is None:
        nan = float("nan")
        intervals = (
            Interval(auroc, nan, nan),
            Interval(float(d[0]), nan, nan),
            Interval(float(shift[0]), nan, nan),
        )
    else:
        w = np.asarray(weights, dtype=np.float64)
        boot_d, boot_shift = _effects(s, y, w)
        intervals = (
            _interval(auroc, weighted_auroc(s, y, w)),
            _interval(float(d[0]), boot_d),
            _interval(float(shift[0]), boot_shift),
        )
    return Separation(
        n_positive=int(y.sum()),
        n_negative=int((~y).sum()),
        auroc=intervals[0],
        cohens_d=intervals[1],
        relative_shift=intervals[2],
        mean_positive=float(s[y].mean()),
        mean_negative=float(s[~y].mean()),
    )


# ------------------------------------------------------------------------- cross-fitted probes
def cross_fitted_scores(
    features: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
    splitter: Any = None,
) -> FloatArray:
    """Out-of-fold P(positive) of a standardised logistic regression on ``features``.

    Folds are stratified by label and grouped by ``groups`` (a cluster never sits on both sides
    of a split), so every score comes from a model that never saw its cluster.

    Args:
        features: ``[n, k]`` inputs (hidden states, feature vectors).
        labels: ``[n]`` booleans.
        groups: ``[n]`` cluster per observation.
        folds: number of folds (ignored when ``splitter`` is given).
        seed: fold-shuffling seed.
        c: inverse L2 regularisation strength of the logistic regression.
        splitter: a scikit-learn splitter to use instead (``LeaveOneGroupOut()`` for
            leave-one-template-out).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(labels).astype(int)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"features have {x.shape[0]} rows but labels {y.shape[0]}")
    cv = splitter or StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    proba = cross_val_predict(model, x, y, groups=np.asarray(groups), cv=cv, method="predict_proba")
    return np.asarray(proba[:, 1], dtype=np.float64)


@dataclass(frozen=True)
class FeatureSetComparison:
    """Cross-fitted AUROC of a base feature set, the base plus extra features, and the gain."""

    base: Interval
    extended: Interval
    gain: Interval

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "base": self.base.to_dict(),
            "extended": self.extended.to_dict(),
            "gain": self.gain.to_dict(),
        }


def compare_feature_sets(
    base: ArrayLike,
    extra: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
) -> FeatureSetComparison:
    """Does ``extra`` add to ``base``? Cross-fitted AUROC of both sets on the same folds.

    The gain's interval is a paired cluster bootstrap: both models' out-of-fold scores are
    resampled with the same weights.
    """
    b = np.asarray(base, dtype=np.float64)
    e = np.asarray(extra, dtype=np.float64)
    b = b[:, None] if b.ndim == 1 else b
    e = e[:, None] if e.ndim == 1 else e
    y = np.asarray(labels).astype(bool)
    base_scores = cross_fitted_scores(b, y, groups, folds=folds, seed=seed)
    full_scores = cross_fitted_scores(np.hstack([b, e]), y, groups, folds=folds, seed=seed)
    weights = cluster_bootstrap_weights(groups, y.shape[0], n_boot, seed) if n_boot else None
    first = separation(base_scores, y, weights=weights, n_boot=0)
    second = separation(full_scores, y, weights=weights, n_boot=0)
    if weights is None:
        nan = float("nan")
        gain = Interval(second.auroc.estimate - first.auroc.estimate, nan, nan)
    else:
        w = weights.astype(np.float64)
        diff = weighted_auroc(full_scores, y, w) - weighted_auroc(base_scores, y, w)
        gain = _interval(second.auroc.estimate - first.auroc.estimate, diff)
    return FeatureSetComparison(first.auroc, second.auroc, gain)


def split_half_selection(
    table: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    names: Sequence[str],
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Pick the most separating signal on half the clusters; report it on the other half.

    Choosing the best of hundreds of (metric, layer, position) signals on the data that reports
    it overstates it; here the choice (by |AUROC - 0.5|, orientation included) is made on a
    random half of the clusters (stratified by label) and the AUROC is measured on the other.

    Args:
        table: ``[n, S]`` signal values.
        labels: ``[n]`` booleans.
        groups: ``[n]`` clusters.
        names: ``S`` signal names.
        seed: split and bootstrap seed.
        n_boot: resamples for the held-out interval.

    Returns:
        ``{"signal", "selection_auroc", "held_out": Separation dict, "oriented_auroc"}``; the
        oriented AUROC flips a signal chosen for being *lower* on the positive group.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    x = np.asarray(table, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    g = np.asarray(groups)
    if x.shape != (y.shape[0], len(names)):
        raise InputError(f"table must be [{y.shape[0]}, {len(names)}], got {x.shape}")
    split = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    select, report = next(split.split(x, y, g))
    aurocs = np.array([roc_auc_score(y[select], x[select, j]) for j in range(x.shape[1])])
    best = int(np.argmax(np.abs(aurocs - 0.5)))
    held_out = separation(x[report, best], y[report], groups=g[report], n_boot=n_boot, seed=seed)
    flip = aurocs[best] < 0.5
    oriented = held_out.auroc
    if flip:
        oriented = Interval(1 - oriented.estimate, 1 - oriented.high, 1 - oriented.low)
    return {
        "signal": names[best],
        "selection_auroc": _round(float(aurocs[best])),
        "held_out": held_out.to_dict(),
        "oriented_auroc": oriented.to_dict(),
        "n_selection": int(select.size),
        "n_report": int(report.size),
    }


def mean_interval(
    values: ArrayLike, *, groups: ArrayLike | None = None, n_boot: int = 1000, seed: int = 0
) -> Interval:
    """A mean (an accuracy, a rate) with its 95% cluster-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise InputError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    estimate = float(v.mean())
    if n_boot <= 0:
        return Interval(estimate, float("nan"), float("nan"))
    w = cluster_bootstrap_weights(groups, v.size, n_boot, seed).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = (w * v).sum(axis=1) / w.sum(axis=1)
    return _interval(estimate, draws)
