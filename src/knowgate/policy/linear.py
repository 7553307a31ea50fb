"""The linear scorer every fitted policy shares: standardise, then L2 logistic regression.

Also the grouped, stratified K-fold splits all fitting and cross-fitting use. Fitted with
scikit-learn, stored as plain numbers (:class:`~knowgate.policy.fused.LinearScorer`), so a saved
policy needs no pickled estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from knowgate.errors import PolicyError
from knowgate.policy.fused import LinearScorer

Splits = list[tuple[NDArray[np.int64], NDArray[np.int64]]]


def validate_xy(
    x: ArrayLike, y: ArrayLike, feature_names: Sequence[str] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Features and 0/1 labels, checked: 2-D, finite, matching, both classes twice or more.

    Raises:
        PolicyError: naming the problem (and the feature with NaN or inf values).
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y).ravel()
    if xa.ndim != 2:
        raise PolicyError(f"features must be a 2-D [n, k] matrix, got shape {xa.shape}")
    if xa.shape[0] != ya.shape[0]:
        raise PolicyError(f"{xa.shape[0]} feature rows but {ya.shape[0]} labels")
    if feature_names is not None and len(feature_names) != xa.shape[1]:
        raise PolicyError(f"{len(feature_names)} feature names for {xa.shape[1]} columns")
    bad = ~np.isfinite(xa)
    if bad.any():
        col = int(np.argwhere(bad)[0][1])
        name = feature_names[col] if feature_names is not None else f"column {col}"
        raise PolicyError(f"feature {name!r} has NaN or inf values")
    if not np.all(np.isin(ya, (0, 1))):
        raise PolicyError("labels must be 0/1 (1 = closed-book answer correct)")
    counts = np.bincount(ya.astype(np.int64), minlength=2)
    if counts.min() < 2:
        raise PolicyError(
            f"need at least 2 correct and 2 wrong closed-book answers to fit, got {counts[1]} "
            f"correct and {counts[0]} wrong"
        )
    return xa, ya.astype(np.int64)


def make_splits(
    y: ArrayLike, groups: ArrayLike | None = None, *, n_splits: int = 5, seed: int = 0
) -> Splits:
    """Stratified K-fold splits; grouped (a group never straddles a split) when ``groups`` given.

    ``n_splits`` shrinks to the minority-class count when there are fewer positives than folds.
    """
    ya = np.asarray(y).ravel()
    minority = int(np.bincount(ya.astype(np.int64), minlength=2).min())
    k = min(n_splits, minority)
    if k < 2:
        raise PolicyError(f"cross-validation needs >= 2 examples of each class, got {minority}")
    dummy = np.zeros((ya.size, 1))
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(dummy, ya)]
    g = np.asarray(groups)
    if g.shape[0] != ya.shape[0]:
        raise PolicyError(f"{g.shape[0]} groups for {ya.shape[0]} labels")
    grouped = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in grouped.split(dummy, ya, g)]


def estimator(c: float) -> Any:
    """Standardise + L2 logistic regression with inverse strength ``c`` (unfitted)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def out_of_fold_logits(
    x: NDArray[np.float64], y: NDArray[np.int64], splits: Splits, *, c: float = 1.0
) -> NDArray[np.float64]:
    """Logits of each row from a regression that did not see it."""
    return np.asarray(cross_val_predict(estimator(c), x, y, cv=splits, method="decision_function"))


def fit_linear(
    x: NDArray[np.floating], y: NDArray[np.int64], *, c: float = 1.0
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float]:
    """Fit standardise + logistic regression; its parameters as arrays.

    Returns:
        ``(mean, scale, coefficients, intercept)``: ``logit = coef . (x - mean) / scale + b``.

    Raises:
        PolicyError: scikit-learn refuses the data (a single class, say).
    """
    try:
        pipe = estimator(c).fit(np.asarray(x, dtype=np.float64), y)
    except ValueError as exc:
        raise PolicyError(f"cannot fit a logistic regression: {exc}") from exc
    scaler, lr = pipe[0], pipe[-1]
    return (
        np.asarray(scaler.mean_, dtype=np.float64),
        np.asarray(scaler.scale_, dtype=np.float64),
        np.asarray(lr.coef_[0], dtype=np.float64),
        float(lr.intercept_[0]),
    )


def linear_logits(
    x: NDArray[np.floating],
    mean: NDArray[np.float64],
    scale: NDArray[np.float64],
    coef: NDArray[np.float64],
    intercept: float,
) -> NDArray[np.float64]:
    """Logits of rows of ``x`` under fitted parameters (see :func:`fit_linear`)."""
    z = (np.asarray(x, dtype=np.float64) - mean) / scale
    return np.asarray(z @ coef + intercept)


def fit_scorer(
    x: NDArray[np.float64], y: NDArray[np.int64], feature_names: Sequence[str], *, c: float = 1.0
) -> LinearScorer:
    """Standardise + logistic regression on all rows, as stored parameters."""
    mean, scale, coef, intercept = fit_linear(x, y, c=c)
    return LinearScorer(
        feature_names=tuple(feature_names),
        scaler_mean=tuple(float(v) for v in mean),
        scaler_scale=tuple(float(v) for v in scale),
        coefficients=tuple(float(v) for v in coef),
        intercept=intercept,
    )
