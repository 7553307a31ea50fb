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

The learner is pluggable: a plain :data:`Learner` (a function returning an object with
``logits(x)``; a standardised logistic regression by default, :func:`logistic_learner`) or a
:class:`~knowgate.policy.selection.Recipe`, which chooses its inputs and regularisation by
inner cross-validation on the training rows (feature groups and ``C`` for fused policies; the
layer, position and ``C`` of a hidden-state probe). A recipe's choice is made in step 1 on the
same inner folds that give the out-of-fold logits, and kept per outer fold
(:attr:`FoldFit.choice`). ``knowgate calibrate`` fits the same recipes on all its rows
(:func:`knowgate.policy.fit_policy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from knowgate.errors import PolicyError
from knowgate.evaluation.metrics import column_aurocs
from knowgate.policy.calibration import Calibrator, fit_calibrator
from knowgate.policy.linear import Splits, fit_scorer, make_splits
from knowgate.policy.selection import Choice, Recipe, ScoreModel, as_recipe

__all__ = [
    "CrossFit",
    "FoldFit",
    "FoldModel",
    "Learner",
    "Recipe",
    "ScoreModel",
    "Splits",
    "cross_fit",
    "fit_fold",
    "held_out_signed",
    "inner_splits",
    "logistic_learner",
    "outer_splits",
]


Learner = Callable[[NDArray[Any], NDArray[np.int64], Sequence[str]], ScoreModel]
"""Fits a :class:`ScoreModel` on ``(x, y, feature names)``."""


def logistic_learner(x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str]) -> ScoreModel:
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
        choice: what a recipe chose on the training rows (``None`` for plain learners).
    """

    train: NDArray[np.int64]
    test: NDArray[np.int64]
    p_train: NDArray[np.float64]
    p_test: NDArray[np.float64]
    model: ScoreModel
    calibrator: Calibrator
    choice: Choice | None = None


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


@dataclass(frozen=True)
class FoldModel:
    """A learner or recipe fitted on one set of training rows, and calibrated.

    Attributes:
        model: fitted on all the training rows.
        calibrator: fitted on their out-of-fold logits.
        p_train: their calibrated out-of-fold p(known).
        choice: what a recipe chose (``None`` for plain learners).
    """

    model: ScoreModel
    calibrator: Calibrator
    p_train: NDArray[np.float64]
    choice: Choice | None


def fit_fold(
    x: NDArray[Any],
    y: NDArray[np.int64],
    names: Sequence[str],
    inner: Splits,
    *,
    calibration: str,
    learner: Learner | Recipe = logistic_learner,
) -> FoldModel:
    """Fit on one set of training rows, with given inner splits (indices into those rows).

    Raises:
        PolicyError: an inner training part lacks a class, or the learner fails.
    """
    try:
        fitted = as_recipe(learner).fit(x, y, names, inner)
        if not np.all(np.isfinite(fitted.oof_logits)):
            raise PolicyError("the inner splits do not cover every training row once")
        calibrator = fit_calibrator(calibration, fitted.oof_logits, y)
    except ValueError as exc:  # scikit-learn: a class missing from an inner fold, etc.
        raise PolicyError(f"cannot fit on this fold: {exc}") from exc
    p_train = np.clip(calibrator.apply(fitted.oof_logits), 0.0, 1.0)
    return FoldModel(fitted.model, calibrator, p_train, fitted.choice)


def cross_fit(
    x: NDArray[Any],
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
    learner: Learner | Recipe = logistic_learner,
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
        learner: the score model's fitting function, or a recipe that also chooses its
            inputs by inner cross-validation on each outer fold's training rows.

    Raises:
        PolicyError: non-finite features, or a training fold with fewer than 2 correct or 2 wrong
            closed-book answers.
    """
    n = y.size
    where = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if x.shape[0] != n or where.shape != (n,):
        raise PolicyError(f"{x.shape[0]} feature rows, {n} labels, {where.size} row flags")
    finite_rows = np.isfinite(x).all(axis=1)  # no copy of x (hidden states are large)
    if not finite_rows[where].all():
        if x.shape[1] == len(names):
            bad = [nm for j, nm in enumerate(names) if not np.all(np.isfinite(x[where, j]))]
        else:
            bad = list(names)
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
        fitted = fit_fold(
            x[train], y[train], names, inner, calibration=calibration, learner=learner
        )
        if test.size:
            logits = fitted.model.logits(x[test])
            score[test] = expit(logits)
            p_known[test] = np.clip(fitted.calibrator.apply(logits), 0.0, 1.0)
            fold_of[test] = i
        folds.append(
            FoldFit(
                train,
                test,
                fitted.p_train,
                p_known[test].copy(),
                fitted.model,
                fitted.calibrator,
                fitted.choice,
            )
        )
    return CrossFit(score, p_known, fold_of, tuple(folds))


def held_out_signed(
    x: NDArray[Any],
    y: NDArray[np.int64],
    splits: Splits,
    *,
    rows: NDArray[np.bool_] | None = None,
) -> NDArray[np.float64]:
    """Raw signals turned into held-out scores: each fold's direction from its training rows.

    The cross-fit of a one-signal threshold (the direction is all there is to fit): for every
    column of ``x``, each outer fold chooses the sign (higher or lower = known) by AUROC on its
    training rows and applies it to its held-out rows.

    Returns:
        ``x`` (``[n, k]``, or ``[n]``) with each held-out row signed by its fold's directions;
        NaN outside ``rows``.
    """
    flat = np.asarray(x, dtype=np.float64)
    one = flat.ndim == 1
    flat = flat[:, None] if one else flat
    where = np.ones(y.size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    out = np.full(flat.shape, np.nan)
    for train_all, test_all in splits:
        train, test = train_all[where[train_all]], test_all[where[test_all]]
        direction = np.where(column_aurocs(y[train], flat[train]) < 0.5, -1.0, 1.0)
        out[test] = flat[test] * direction
    return out[:, 0] if one else out
