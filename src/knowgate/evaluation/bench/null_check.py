"""A guard against leakage: cross-fit the main policies again on permuted labels.

Permuting the closed-book label within each dataset destroys every relation between a question
and its label except the dataset's base rate. A leak-free cross-fit then ranks no better than
chance among the held-out questions of *one outer fold and one dataset*: they are scored by one
model fitted without them, and given that model their permuted labels are exchangeable, so the
AUROC over such pairs has the exact Mann-Whitney null. Each fold is tested on its own. Folds are
not pooled on purpose: a cross-validated AUROC averaged or pooled over folds is *not* exactly
null - each fold's model was trained on the other folds' labels, which correlates the folds'
AUROCs (about +0.45 for a logistic regression on noise) and widens the pooled statistic well
beyond the textbook variance, so a pooled test would cry wolf. The pooled AUROC is reported for
reference only (it may also exceed 0.5 here by recognising the dataset).

The intervals are normal intervals around each fold's AUROC with its variance *under the null*:
the pair-weighted Mann-Whitney null variance of each dataset's AUROC, ``(n1 + n0 + 1) / (12 n1
n0)`` (Hanley and McNeil's variance at 0.5; ties only make the true null variance smaller, so
this errs towards not rejecting). An interval contains 0.5 exactly when the z-test of "no
ranking" does not reject. The variance at the observed AUROC would not do: with a few positives
per fold and dataset it shrinks whenever the AUROC drifts from 0.5 by chance, and the test
rejects far more often than its level. The confidence is family-wise (Bonferroni over every
fold of every policy), so "every interval contains 0.5" is one 95% statement.

A leak - a row's label reaching the fit that scores it, a cut chosen on the held-out rows, a
feature computed from the answer's correctness - shows up as fold intervals above 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.policies import (
    PolicyCandidate,
    cross_fit_candidate,
    inner_splits,
    outer_splits,
)
from knowgate.evaluation.bench.summary import NullCheck, NullPolicy
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.metrics import auroc, stratified_auroc, stratified_auroc_variance
from knowgate.evaluation.reporting import Interval, finite

PERMUTATION = "closed-book labels permuted within each dataset"


def permute_within(
    y: NDArray[np.int64], strata: NDArray[np.str_], rng: np.random.Generator
) -> NDArray[np.int64]:
    """``y`` with its values shuffled among the rows of each stratum."""
    out = y.copy()
    for name in dict.fromkeys(strata.tolist()):
        idx = np.flatnonzero(strata == name)
        out[idx] = y[rng.permutation(idx)]
    return out


def null_aurocs(
    table: BenchTable,
    candidates: Sequence[PolicyCandidate],
    y: NDArray[np.int64],
    *,
    folds: int = 5,
    calibration: str = "sigmoid",
    seed: int = 0,
    confidence: float = 0.95,
) -> NullCheck:
    """Cross-fit ``candidates`` against labels ``y``; test each fold's within-dataset AUROC.

    Args:
        table: the questions (features, groups, datasets).
        candidates: the policies to fit.
        y: the labels to fit against (permuted ones for the null check).
        folds: outer folds.
        calibration: calibration method.
        seed: split seed.
        confidence: family-wise confidence over the policies.
    """
    lab = table.labelled
    splits = outer_splits(y, lab.groups, folds=folds, seed=seed)
    inner = min(folds, 5)
    shared = inner_splits(splits, y, lab.groups, folds=inner, seed=seed)
    tests = max(1, len(candidates) * len(splits))
    z = float(norm.ppf(1.0 - (1.0 - confidence) / (2 * tests)))
    out: dict[str, NullPolicy] = {}
    for candidate in candidates:
        try:
            fit = cross_fit_candidate(
                candidate,
                y,
                lab.groups,
                splits,
                calibration=calibration,
                inner_folds=inner,
                seed=seed,
                shared_inner=shared,
            )
        except PolicyError:
            continue
        assert fit.score is not None
        intervals = []
        for fold in fit.folds:
            test = fold.test
            within = stratified_auroc(y[test], fit.score[test], lab.datasets[test])
            half = z * float(np.sqrt(stratified_auroc_variance(within, at=0.5)))
            intervals.append(Interval.of(within.auroc, within.auroc - half, within.auroc + half))
        rows = candidate.rows
        verdicts = [i.contains(0.5) for i in intervals]
        out[candidate.name] = NullPolicy(
            folds=tuple(intervals),
            auroc=finite(auroc(y[rows], fit.score[rows])),
            contains_half=None if None in verdicts else all(verdicts),
        )
    passed = all(p.contains_half is not False for p in out.values())
    return NullCheck(PERMUTATION, confidence, out, passed)


def null_check(
    table: BenchTable,
    candidates: Sequence[PolicyCandidate],
    *,
    folds: int = 5,
    calibration: str = "sigmoid",
    seed: int = 0,
) -> NullCheck:
    """:func:`null_aurocs` on labels permuted within each dataset (seeded)."""
    lab = table.labelled
    y = permute_within(lab.y, lab.datasets, np.random.default_rng(seed))
    return null_aurocs(table, candidates, y, folds=folds, calibration=calibration, seed=seed)
