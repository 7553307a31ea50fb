"""Fitting the fused policy, and cross-fitted predictions for honest held-out evaluation.

``fit_fused`` follows the recipe of scikit-learn's ``CalibratedClassifierCV(ensemble=False)``
with public pieces: out-of-fold logits of a standardised logistic regression (grouped,
stratified K-fold) train the calibrator; the final regression is fitted on all rows. The stored
result is one scaler, one weight vector and one calibrator - plain numbers in JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from knowgate.errors import PolicyError
from knowgate.policy.calibration import fit_calibrator
from knowgate.policy.fused import FusedPolicy, LinearScorer
from knowgate.policy.operating_points import (
    FixedProbability,
    OperatingPoint,
    TargetAccuracy,
    ThresholdChoice,
    choose_threshold,
)

Splits = list[tuple[NDArray[np.int64], NDArray[np.int64]]]


def _validate(
    x: ArrayLike, y: ArrayLike, feature_names: Sequence[str] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
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


def _estimator(c: float) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def out_of_fold_logits(
    x: NDArray[np.float64], y: NDArray[np.int64], splits: Splits, *, c: float = 1.0
) -> NDArray[np.float64]:
    """Logits of each row from a regression that did not see it."""
    return np.asarray(cross_val_predict(_estimator(c), x, y, cv=splits, method="decision_function"))


def fit_scorer(
    x: NDArray[np.float64], y: NDArray[np.int64], feature_names: Sequence[str], *, c: float = 1.0
) -> LinearScorer:
    """Standardise + logistic regression on all rows, as stored parameters."""
    pipe = _estimator(c).fit(x, y)
    scaler, lr = pipe[0], pipe[-1]
    return LinearScorer(
        feature_names=tuple(feature_names),
        scaler_mean=tuple(float(v) for v in scaler.mean_),
        scaler_scale=tuple(float(v) for v in scaler.scale_),
        coefficients=tuple(float(v) for v in lr.coef_[0]),
        intercept=float(lr.intercept_[0]),
    )


@dataclass(frozen=True)
class FusedFit:
    """A fitted fused policy plus what the fit saw.

    Attributes:
        policy: the policy, threshold set by the operating point.
        oof_logits: out-of-fold logits of the rows that trained the calibrator.
        threshold_choice: how the threshold was chosen and what it does on calibration data.
    """

    policy: FusedPolicy
    oof_logits: NDArray[np.float64]
    threshold_choice: ThresholdChoice


def fit_fused(
    x: ArrayLike,
    y: ArrayLike,
    feature_names: Sequence[str],
    *,
    calibration: str = "isotonic",
    operating_point: OperatingPoint | None = None,
    groups: ArrayLike | None = None,
    n_splits: int = 5,
    c: float = 1.0,
    seed: int = 0,
    holdout_fraction: float = 0.3,
    model_id: str | None = None,
    prompt_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> FusedFit:
    """Fit standardise -> logistic regression -> calibrator, then set the threshold.

    Args:
        x: ``[n, k]`` features, columns named by ``feature_names``.
        y: 1 when the closed-book answer was correct.
        feature_names: column names (signals-registry names).
        calibration: ``isotonic``, ``sigmoid`` (Platt), ``temperature`` or ``none``.
        operating_point: how to choose the threshold (default ``probability:0.5``). Thresholds
            come from calibrated out-of-fold probabilities; a :class:`TargetAccuracy` point
            instead holds out ``holdout_fraction`` of the rows (grouped, stratified), fits on the
            rest and chooses the threshold on the held-out rows, so its guarantee is valid.
        groups: group label per row (the normalised question); rows of a group stay together.
        n_splits: cross-validation folds for the calibrator's out-of-fold logits.
        c: inverse L2 regularisation strength of the logistic regression.
        seed: shuffling seed of the splits.
        holdout_fraction: share of rows held out for a target-accuracy threshold.
        model_id: the model the features came from (recorded; checked on load).
        prompt_config: the closed-book prompt configuration (recorded).
        training: extra facts to record in the artifact (datasets, held-out metrics).

    Raises:
        PolicyError: bad shapes, non-finite features, too few examples of a class.
    """
    xa, ya = _validate(x, y, feature_names)
    op = operating_point or FixedProbability(threshold=0.5)
    fit_rows = np.arange(ya.size)
    hold_rows: NDArray[np.int64] | None = None
    if isinstance(op, TargetAccuracy):
        if not 0.05 <= holdout_fraction <= 0.5:
            raise PolicyError(f"holdout_fraction must be in [0.05, 0.5], got {holdout_fraction}")
        k = max(2, round(1 / holdout_fraction))
        fit_rows, hold_rows = make_splits(ya, groups, n_splits=k, seed=seed + 1)[0]
    g_fit = None if groups is None else np.asarray(groups)[fit_rows]
    x_fit, y_fit = xa[fit_rows], ya[fit_rows]
    splits = make_splits(y_fit, g_fit, n_splits=n_splits, seed=seed)
    oof = out_of_fold_logits(x_fit, y_fit, splits, c=c)
    calibrator = fit_calibrator(calibration, oof, y_fit)
    scorer = fit_scorer(x_fit, y_fit, feature_names, c=c)
    if hold_rows is not None:
        p_cal = calibrator.apply(scorer.logits(xa[hold_rows]))
        choice = choose_threshold(op, p_cal, ya[hold_rows], probabilistic=True)
        cal_rows = int(hold_rows.size)
    else:
        choice = choose_threshold(op, calibrator.apply(oof), y_fit, probabilistic=True)
        cal_rows = int(fit_rows.size)
    record: dict[str, Any] = {
        "n_samples": int(ya.size),
        "n_positive": int(ya.sum()),
        "n_fit_samples": int(fit_rows.size),
        "n_threshold_samples": cal_rows,
        "cv_folds": len(splits),
        "regularization_c": c,
        "calibration": calibration,
        "threshold_choice": {
            "retrieval_rate": choice.retrieval_rate,
            "accuracy_without_retrieval": choice.accuracy_without_retrieval,
            **choice.details,
        },
        **dict(training or {}),
    }
    policy = FusedPolicy(
        scorer,
        calibrator,
        threshold=min(1.0, choice.threshold),
        model_id=model_id,
        operating_point=op,
        training=record,
        prompt_config=prompt_config,
    )
    return FusedFit(policy, oof, choice)


@dataclass(frozen=True)
class CrossFitted:
    """Held-out predictions of a fused model: each row scored by a fit that never saw it.

    Attributes:
        p_raw: the logistic regression's own probability (before calibration).
        p_calibrated: after the calibrator (itself fitted inside the training folds).
        fold: the outer fold each row was held out in.
    """

    p_raw: NDArray[np.float64]
    p_calibrated: NDArray[np.float64]
    fold: NDArray[np.int64]


def cross_fitted_p_known(
    x: ArrayLike,
    y: ArrayLike,
    feature_names: Sequence[str],
    *,
    calibration: str = "isotonic",
    groups: ArrayLike | None = None,
    n_splits: int = 5,
    c: float = 1.0,
    seed: int = 0,
) -> CrossFitted:
    """Nested cross-fitting: outer folds hold rows out, :func:`fit_fused` runs on the rest."""
    xa, ya = _validate(x, y, feature_names)
    outer = make_splits(ya, groups, n_splits=n_splits, seed=seed)
    p_raw = np.full(ya.size, np.nan)
    p_cal = np.full(ya.size, np.nan)
    fold = np.full(ya.size, -1, dtype=np.int64)
    g = None if groups is None else np.asarray(groups)
    for i, (train, test) in enumerate(outer):
        fitted = fit_fused(
            xa[train],
            ya[train],
            feature_names,
            calibration=calibration,
            groups=None if g is None else g[train],
            n_splits=n_splits,
            c=c,
            seed=seed,
        ).policy
        logits = fitted.scorer.logits(xa[test])
        p_raw[test] = expit(logits)
        p_cal[test] = fitted.p_known_matrix(xa[test])
        fold[test] = i
    return CrossFitted(p_raw, p_cal, fold)
