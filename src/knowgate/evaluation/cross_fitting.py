"""Cross-fitting: every held-out p(known) the evaluation reports, from one routine.

No fitted policy is ever scored on a row it was fitted on. Rows are split into outer folds
(stratified on closed-book correctness, grouped by normalised question so the questions two
datasets share never straddle a split). For each outer fold, :func:`fit_fold` fits on the
training rows the recipe of :func:`~knowgate.policy.fit_fused`:

1. inner folds over the training rows (grouped, stratified); a learner fitted on each inner
   training part scores the inner held-out part, giving every training row an *out-of-fold*
   logit from a model that did not see it;
2. a calibrator (isotonic, Platt's sigmoid, temperature) is fitted on those out-of-fold logits;
3. the learner is fitted once more on all training rows.

The held-out rows are then scored by (3) and calibrated by (2). Kept per fold: the training
rows' calibrated out-of-fold p(known) - where an operating rule chooses its cut, so a cut never
reads a probability from a model that saw the row - and the held-out rows' p(known), where the
cut is applied.

The learner is pluggable (:data:`Learner`): a standardised logistic regression by default
(:func:`logistic_learner`, the shipped policies' scorer); a probe on hidden states or any other
score model plugs in by returning an object with ``logits(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from knowgate.errors import PolicyError
from knowgate.policy.calibration import Calibrator, fit_calibrator
from knowgate.policy.fitting import Splits, fit_scorer, make_splits

__all__ = [
    "CrossFit",
    "FoldFit",
    "Learner",
    "ScoreModel",
    "Splits",
    "cross_fit",
    "fit_fold",
    "inner_splits",
    "logistic_learner",
    "outer_splits",
]


class ScoreModel(Protocol):
    """A fitted scorer: higher logits = more likely known."""

    def logits(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Raw scores of the rows of ``x``."""
        ...


Learner = Callable[[NDArray[np.float64], NDArray[np.int64], Sequence[str]], ScoreModel]
"""Fits a :class:`ScoreModel` on ``(x, y, feature names)``."""


def logistic_learner(
    x: NDArray[np.float64], y: NDArray[np.int64], names: Sequence[str]
) -> ScoreModel:
    """Standardise + L2 logistic regression (C = 1): the shipped fused policies' scorer."""
    return fit_scorer(x, y, names)


def outer_splits(
    y: NDArray[np.int64], groups: NDArray[np.str_] | None, *, folds: int, seed: int
) -> Splits:
    """Stratified, grouped K-fold splits of all rows (fewer folds when positives are rarer).

    Raises:
        PolicyError: fewer than 2 examples of a class.
    """
    return make_splits(y, groups, n_splits=folds, seed=seed)


def inner_splits(
    splits: Splits,
    y: NDArray[np.int64],
    groups: NDArray[np.str_] | None,
    *,
    folds: int,
    seed: int,
) -> list[Splits] | None:
    """The inner splits of every outer fold's training rows (indices into those rows).

    They depend only on the rows, not on the features, so one set serves every policy fitted
    on all rows (grouped, stratified splitting is the slow part of a fit). ``None`` when a
    training fold has too few correct answers to split; every fit will then say so itself.
    """
    try:
        return [
            make_splits(
                y[train], None if groups is None else groups[train], n_splits=folds, seed=seed
            )
            for train, _ in splits
        ]
    except PolicyError:
        return None


@dataclass(frozen=True)
class FoldFit:
    """One outer fold of a cross-fitted policy.

    Attributes:
        train: training row indices (restricted to the policy's rows).
        test: held-out row indices.
        p_train: calibrated p(known) of the training rows, each from an inner model that did not
            see the row (where an operating rule chooses its cut).
        p_test: calibrated p(known) of the held-out rows.
        model: the learner fitted on all training rows.
        calibrator: the calibrator fitted on the training rows' out-of-fold logits.
    """

    train: NDArray[np.int64]
    test: NDArray[np.int64]
    p_train: NDArray[np.float64]
    p_test: NDArray[np.float64]
    model: ScoreModel
    calibrator: Calibrator


@dataclass(frozen=True)
class CrossFit:
    """Held-out predictions of one policy: each row scored by a fit that never saw it.

    Attributes:
        score: the learner's own probability, ``sigmoid(logit)`` (ranking score); NaN outside
            the policy's rows.
        p_known: the calibrated probability; NaN outside the policy's rows.
        fold: the outer fold each row was held out in (-1 outside the policy's rows).
        folds: per-fold fits and the training rows' out-of-fold probabilities.
    """

    score: NDArray[np.float64]
    p_known: NDArray[np.float64]
    fold: NDArray[np.int64]
    folds: tuple[FoldFit, ...]


def fit_fold(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    names: Sequence[str],
    inner: Splits,
    *,
    calibration: str,
    learner: Learner = logistic_learner,
) -> tuple[ScoreModel, Calibrator, NDArray[np.float64]]:
    """Fit on one set of training rows, with given inner splits (indices into those rows).

    Returns:
        ``(model fitted on all rows, calibrator, calibrated out-of-fold p(known) per row)``.

    Raises:
        PolicyError: an inner training part lacks a class, or the learner fails.
    """
    oof = np.full(y.size, np.nan)
    try:
        for train, test in inner:
            oof[test] = learner(x[train], y[train], names).logits(x[test])
        if not np.all(np.isfinite(oof)):
            raise PolicyError("the inner splits do not cover every training row once")
        calibrator = fit_calibrator(calibration, oof, y)
        model = learner(x, y, names)
    except ValueError as exc:  # scikit-learn: a class missing from an inner fold, etc.
        raise PolicyError(f"cannot fit on this fold: {exc}") from exc
    return model, calibrator, np.clip(calibrator.apply(oof), 0.0, 1.0)


def cross_fit(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    groups: NDArray[np.str_] | None,
    names: Sequence[str],
    splits: Splits,
    *,
    rows: NDArray[np.bool_] | None = None,
    calibration: str,
    inner_folds: int = 5,
    seed: int = 0,
    shared_inner: Sequence[Splits] | None = None,
    learner: Learner = logistic_learner,
) -> CrossFit:
    """Fit on each outer fold's training rows, predict its held-out rows.

    Args:
        x: ``[n, k]`` features of every row.
        y: closed-book correctness (0/1) of every row.
        groups: cross-validation group per row (``None``: every row its own group).
        names: the feature names.
        splits: outer folds over all rows (:func:`outer_splits`).
        rows: where the policy is defined (default everywhere); training and held-out rows are
            restricted to them.
        calibration: calibration method.
        inner_folds: folds of the inner cross-validation.
        seed: inner split seed.
        shared_inner: precomputed inner splits per outer fold (:func:`inner_splits`), used
            only when the policy is defined on every row.
        learner: the score model's fitting function.

    Raises:
        PolicyError: non-finite features, or a training fold with fewer than 2 correct or 2 wrong
            closed-book answers.
    """
    n = y.size
    where = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if x.shape[0] != n or where.shape != (n,):
        raise PolicyError(f"{x.shape[0]} feature rows, {n} labels, {where.size} row flags")
    if not np.all(np.isfinite(x[where])):
        bad = [nm for j, nm in enumerate(names) if not np.all(np.isfinite(x[where, j]))]
        raise PolicyError(f"feature(s) {bad} have NaN or inf values")
    use_shared = shared_inner is not None and bool(where.all())
    score = np.full(n, np.nan)
    p_known = np.full(n, np.nan)
    fold_of = np.full(n, -1, dtype=np.int64)
    folds = []
    for i, (train_all, test_all) in enumerate(splits):
        train = train_all[where[train_all]]
        test = test_all[where[test_all]]
        if use_shared:
            inner = shared_inner[i]  # type: ignore[index]
        else:
            inner = make_splits(
                y[train],
                None if groups is None else groups[train],
                n_splits=inner_folds,
                seed=seed,
            )
        model, calibrator, p_train = fit_fold(
            x[train], y[train], names, inner, calibration=calibration, learner=learner
        )
        if test.size:
            logits = model.logits(x[test])
            score[test] = expit(logits)
            p_known[test] = np.clip(calibrator.apply(logits), 0.0, 1.0)
            fold_of[test] = i
        folds.append(FoldFit(train, test, p_train, p_known[test].copy(), model, calibrator))
    return CrossFit(score, p_known, fold_of, tuple(folds))
