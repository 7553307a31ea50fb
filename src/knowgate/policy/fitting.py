"""Fitting a calibrated policy on labelled rows: a recipe, a calibrator, an operating point.

:func:`fit_policy` follows the recipe of scikit-learn's ``CalibratedClassifierCV(ensemble=False)``
with public pieces: a recipe (:mod:`knowgate.policy.selection`) gives every row an out-of-fold
logit from grouped, stratified inner folds - choosing its inputs and regularisation on those
folds when it chooses - and fits its model on all rows; the calibrator is fitted on the
out-of-fold logits; the operating point chooses the threshold from the calibrated out-of-fold
probabilities. The stored result is plain numbers in JSON. :func:`fit_fused` is the classic
fused policy: one logistic regression on every given feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import PolicyError, SignalError
from knowgate.policy.base import Policy
from knowgate.policy.calibration import fit_calibrator
from knowgate.policy.fused import FusedPolicy
from knowgate.policy.linear import make_splits, validate_xy
from knowgate.policy.operating_points import (
    FixedProbability,
    OperatingPoint,
    TargetAccuracy,
    ThresholdChoice,
    choose_threshold,
)
from knowgate.policy.selection import Choice, Logistic, Recipe, as_policy
from knowgate.schema import StrictModel
from knowgate.signals import SignalConfig, is_vector_signal


@dataclass(frozen=True)
class PolicyFit:
    """A fitted policy plus what the fit saw.

    Attributes:
        policy: the policy, threshold set by the operating point.
        oof_logits: out-of-fold logits of the rows that trained the calibrator.
        threshold_choice: how the threshold was chosen and what it does on calibration data.
        choice: what the recipe chose by inner cross-validation (``None`` when it chooses
            nothing).
    """

    policy: Policy
    oof_logits: NDArray[np.float64]
    threshold_choice: ThresholdChoice
    choice: Choice | None = None


@dataclass(frozen=True)
class FusedFit:
    """A fitted fused policy plus what the fit saw (see :class:`PolicyFit`)."""

    policy: FusedPolicy
    oof_logits: NDArray[np.float64]
    threshold_choice: ThresholdChoice


def _matrix(x: ArrayLike, y: ArrayLike, names: Sequence[str], vectors: bool) -> Any:
    """Validated features; vector blocks stay in their own dtype (hundreds of columns each)."""
    if not vectors:
        return validate_xy(x, y, names)
    xa = np.asarray(x)
    if xa.ndim != 2 or not np.issubdtype(xa.dtype, np.floating):
        raise PolicyError(f"features must be a 2-D float matrix, got {xa.dtype} {xa.shape}")
    if not np.all(np.isfinite(xa)):
        raise PolicyError("features have NaN or inf values")
    _, ya = validate_xy(np.zeros((xa.shape[0], 1)), y)
    return xa, ya


def fit_policy(
    x: ArrayLike,
    y: ArrayLike,
    names: Sequence[str],
    *,
    recipe: Recipe | None = None,
    calibration: str = "isotonic",
    operating_point: OperatingPoint | None = None,
    groups: ArrayLike | None = None,
    n_splits: int = 5,
    seed: int = 0,
    holdout_fraction: float = 0.3,
    model_id: str | None = None,
    prompt_config: Mapping[str, Any] | None = None,
    signal_config: StrictModel | Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> PolicyFit:
    """Fit a recipe, its calibrator and its threshold; the result as a shippable policy.

    Args:
        x: ``[n, k]`` inputs whose columns ``names`` names (vector-signal blocks for probes).
        y: 1 when the closed-book answer was correct.
        names: column names (signals-registry names; one name per vector block for probes).
        recipe: what is fitted (default: :class:`~knowgate.policy.selection.Logistic` on every
            column at ``C`` = 1).
        calibration: ``isotonic``, ``sigmoid`` (Platt), ``temperature`` or ``none``.
        operating_point: how to choose the threshold (default ``probability:0.5``). Thresholds
            come from calibrated out-of-fold probabilities; a :class:`TargetAccuracy` point
            instead holds out ``holdout_fraction`` of the rows (grouped, stratified), fits on the
            rest and chooses the threshold on the held-out rows, so its guarantee is valid.
        groups: group label per row (the normalised question); rows of a group stay together.
        n_splits: inner folds for the out-of-fold logits (and the recipe's choices).
        seed: shuffling seed of the splits.
        holdout_fraction: share of rows held out for a target-accuracy threshold.
        model_id: the model the features came from (recorded; checked on load).
        prompt_config: the closed-book prompt configuration (recorded).
        signal_config: the signal configuration the features were computed with (recorded);
            default: the router's default extended by what the fitted policy reads (positions,
            per-layer features, question-only features, vector signals), when a router can
            compute them.
        training: extra facts to record in the artifact (datasets, held-out metrics).

    Raises:
        PolicyError: bad shapes, non-finite features, too few examples of a class.
    """
    recipe = recipe or Logistic()
    vectors = any(is_vector_signal(n) for n in names)
    xa, ya = _matrix(x, y, names, vectors)
    if len(names) > xa.shape[1] or (not vectors and len(names) != xa.shape[1]):
        raise PolicyError(f"{len(names)} names for {xa.shape[1]} columns")
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
    fitted = recipe.fit(x_fit, y_fit, list(names), splits)
    calibrator = fit_calibrator(calibration, fitted.oof_logits, y_fit)
    if hold_rows is not None:
        p_cal = calibrator.apply(fitted.model.logits(xa[hold_rows]))
        choice = choose_threshold(op, p_cal, ya[hold_rows], probabilistic=True)
        cal_rows = int(hold_rows.size)
    else:
        choice = choose_threshold(
            op, calibrator.apply(fitted.oof_logits), y_fit, probabilistic=True
        )
        cal_rows = int(fit_rows.size)
    record: dict[str, Any] = {
        "n_samples": int(ya.size),
        "n_positive": int(ya.sum()),
        "n_fit_samples": int(fit_rows.size),
        "n_threshold_samples": cal_rows,
        "cv_folds": len(splits),
        "recipe": recipe.describe(),
        "calibration": calibration,
        "threshold_choice": {
            "retrieval_rate": choice.retrieval_rate,
            "accuracy_without_retrieval": choice.accuracy_without_retrieval,
            **choice.details,
        },
        **dict(training or {}),
    }
    if isinstance(recipe, Logistic):
        record["regularization_c"] = recipe.c
    if fitted.choice is not None:
        record["selection"] = {
            "chosen": fitted.choice.label,
            "inner_auroc": fitted.choice.inner_auroc,
            "candidates": fitted.choice.scores,
        }
    signals = (
        signal_config.model_dump(mode="json")
        if isinstance(signal_config, StrictModel)
        else (dict(signal_config) if signal_config is not None else None)
    )
    reads = getattr(fitted.model, "reads", None)
    if signals is None and callable(reads):
        try:
            signals = SignalConfig().covering(reads()).model_dump(mode="json")
        except SignalError:  # an evaluation-only input (page views, sampled answers)
            signals = None
    policy = as_policy(
        fitted.model,
        calibrator,
        threshold=min(1.0, choice.threshold),
        model_id=model_id,
        operating_point=op,
        training=record,
        prompt_config=prompt_config,
        signal_config=signals,
    )
    return PolicyFit(policy, fitted.oof_logits, choice, fitted.choice)


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
    signal_config: StrictModel | Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> FusedFit:
    """Fit standardise -> logistic regression (inverse strength ``c``) -> calibrator -> threshold.

    The fused policy on every given feature; see :func:`fit_policy` for the arguments (a
    recipe that chooses groups and ``C`` by inner cross-validation is
    ``fit_policy(..., recipe=FeatureGroups())``).

    Raises:
        PolicyError: bad shapes, non-finite features, too few examples of a class.
    """
    fit = fit_policy(
        x,
        y,
        feature_names,
        recipe=Logistic(c),
        calibration=calibration,
        operating_point=operating_point,
        groups=groups,
        n_splits=n_splits,
        seed=seed,
        holdout_fraction=holdout_fraction,
        model_id=model_id,
        prompt_config=prompt_config,
        signal_config=signal_config,
        training=training,
    )
    assert isinstance(fit.policy, FusedPolicy)
    return FusedFit(fit.policy, fit.oof_logits, fit.threshold_choice)
