"""Every gating policy's held-out p(known), by cross-fitting: no policy is scored on its own data.

Rows are split once (stratified on closed-book correctness, grouped by normalised question, so
the questions ``popqa_random`` and ``popqa_h2`` share never straddle a split). For each outer
fold a policy is fitted on the other folds - standardise, logistic regression, calibrator
fitted on inner out-of-fold logits: :func:`~knowgate.policy.fit_fused`'s recipe, run from its
public pieces so that a fold's inner splits are computed once for all policies - and scores the
held-out fold. A single feature is the same fit on one column: a monotone map of the feature,
its direction learnt on the training folds (a 1-D threshold with a calibrated scale). Kept per
fold: the training rows' out-of-fold p(known) (where an operating rule chooses its cut) and the
held-out rows' p(known) (where the cut is applied).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.both_branches import BenchTable
from knowgate.evaluation.bench.operating_rules import Rule
from knowgate.evaluation.calibration_study import standard_feature_sets
from knowgate.policy.calibration import fit_calibrator
from knowgate.policy.fitting import Splits, fit_scorer, make_splits, out_of_fold_logits
from knowgate.policy.fused import FusedPolicy
from knowgate.signals import feature_specs

log = logging.getLogger(__name__)

Family = Literal["baseline", "single", "fused", "popularity", "oracle"]
HEADLINE = "uncertainty+sparsity (prefill)"
"""The fused feature set of the shipped policies (every model signal known before generation)."""
POPULARITY = "popularity (s_pop)"


@dataclass(frozen=True)
class FoldPrediction:
    """One outer fold of a fitted policy.

    Attributes:
        train: training row indices (restricted to the policy's rows).
        test: held-out row indices.
        p_train: calibrated p(known) of the training rows, each from an inner fit that did not
            see it (where an operating rule chooses its cut).
        p_test: calibrated p(known) of the held-out rows.
    """

    train: NDArray[np.int64]
    test: NDArray[np.int64]
    p_train: NDArray[np.float64]
    p_test: NDArray[np.float64]


@dataclass(frozen=True)
class HeldOutPolicy:
    """A policy's held-out predictions on the benchmark's questions.

    Attributes:
        name: the policy's name in reports.
        family: ``baseline`` (never, always), ``single`` (one feature), ``fused``, ``popularity``
            or ``oracle``.
        stage: ``prefill`` (decides before generation), ``draft`` (reads the closed-book
            draft's probabilities), ``metadata`` (popularity) or ``none``.
        features: the features it reads.
        rows: where it is defined (popularity: PopQA rows only).
        score: ranking score, higher = more likely known (the logistic regression's own
            probability for fitted policies; the label for the oracle); NaN outside ``rows``.
        p_known: calibrated held-out p(known) (NaN outside ``rows``); ``None`` for baselines.
        folds: per-fold predictions of fitted policies.
        fixed_retrieve: the decisions of a policy without a threshold (never, always, oracle).
    """

    name: str
    family: Family
    stage: str
    features: tuple[str, ...]
    rows: NDArray[np.bool_]
    score: NDArray[np.float64] | None = None
    p_known: NDArray[np.float64] | None = None
    folds: tuple[FoldPrediction, ...] = ()
    fixed_retrieve: NDArray[np.bool_] | None = None

    @property
    def fitted(self) -> bool:
        """Whether the policy has a threshold chosen per fold."""
        return bool(self.folds)

    def decide(self, rule: Rule, table: BenchTable) -> tuple[NDArray[np.bool_], list[float]]:
        """Held-out retrieve decisions, the cut of each fold chosen on its training rows only.

        Returns:
            ``(retrieve per row, threshold per fold)``; rows outside ``rows`` retrieve.
        """
        if self.fixed_retrieve is not None:
            return self.fixed_retrieve.copy(), []
        retrieve = np.ones(table.n, dtype=bool)
        cuts = []
        for fold in self.folds:
            t = rule(fold.p_train, table.cb_correct[fold.train], table.rag_correct[fold.train])
            retrieve[fold.test] = (fold.p_test < t) | (t >= 1.0)
            cuts.append(float(t))
        return retrieve, cuts


def _stage(names: Sequence[str]) -> str:
    specs = feature_specs()
    stages = {specs[n].stage for n in names if n in specs}
    if "draft" in stages:
        return "draft"
    return "prefill" if names else "none"


def fit_fold(
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    names: Sequence[str],
    inner: Splits,
    *,
    calibration: str,
) -> tuple[FusedPolicy, NDArray[np.float64]]:
    """:func:`~knowgate.policy.fit_fused`'s recipe on one training fold, with given inner splits.

    Out-of-fold logits of the standardised logistic regression train the calibrator; the final
    regression is fitted on all training rows. The inner splits depend only on the rows, not on
    the features, so they are computed once per fold and shared by every policy (grouped,
    stratified splitting is the slow part of a fit).

    Returns:
        ``(policy, calibrated out-of-fold p(known) of the training rows)``.
    """
    oof = out_of_fold_logits(x, y, inner)
    calibrator = fit_calibrator(calibration, oof, y)
    policy = FusedPolicy(fit_scorer(x, y, names), calibrator)
    return policy, np.clip(calibrator.apply(oof), 0.0, 1.0)


def cross_fit(
    x: NDArray[np.float64],
    table: BenchTable,
    names: Sequence[str],
    splits: Splits,
    rows: NDArray[np.bool_],
    *,
    calibration: str,
    inner_folds: int,
    seed: int,
    inner_splits: Sequence[Splits] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], tuple[FoldPrediction, ...]]:
    """Fit on each fold's training rows, predict its held-out rows.

    Args:
        x: ``[n, k]`` features of every row of ``table``.
        table: both branches (labels and groups).
        names: the feature names.
        splits: outer folds over all rows.
        rows: where the policy is defined; training and held-out rows are restricted to them.
        calibration: calibration method.
        inner_folds: folds of the inner cross-validation.
        seed: split seed.
        inner_splits: precomputed inner splits per outer fold (indices into the fold's
            training rows); computed here when ``None``.

    Returns:
        ``(score, p_known, folds)``; NaN outside ``rows``.

    Raises:
        PolicyError: a training fold has fewer than 2 correct or 2 wrong closed-book answers.
    """
    if not np.all(np.isfinite(x[rows])):
        bad = [n for j, n in enumerate(names) if not np.all(np.isfinite(x[rows, j]))]
        raise PolicyError(f"feature(s) {bad} have NaN or inf values")
    y, groups = table.cb_correct, table.labelled.groups
    score = np.full(table.n, np.nan)
    p_known = np.full(table.n, np.nan)
    folds = []
    for i, (train_all, test_all) in enumerate(splits):
        train = train_all[rows[train_all]]
        test = test_all[rows[test_all]]
        inner = (
            inner_splits[i]
            if inner_splits is not None
            else make_splits(y[train], groups[train], n_splits=inner_folds, seed=seed)
        )
        try:
            policy, p_train = fit_fold(x[train], y[train], names, inner, calibration=calibration)
        except ValueError as exc:  # scikit-learn: a class missing from an inner fold, etc.
            raise PolicyError(f"cannot fit on this fold: {exc}") from exc
        if test.size:
            score[test] = expit(policy.scorer.logits(x[test]))
            p_known[test] = policy.p_known_matrix(x[test])
        folds.append(FoldPrediction(train, test, p_train, p_known[test].copy()))
    return score, p_known, tuple(folds)


@dataclass
class HeldOutSet:
    """All policies' held-out predictions, the splits behind them, and what could not be fitted.

    Attributes:
        policies: name -> predictions, in report order.
        splits: the outer folds.
        skipped: name -> why a policy could not be fitted (too few correct answers, no PopQA).
    """

    policies: dict[str, HeldOutPolicy]
    splits: Splits
    skipped: dict[str, str] = field(default_factory=dict)


def held_out_policies(
    table: BenchTable,
    *,
    folds: int = 5,
    calibration: str = "sigmoid",
    seed: int = 0,
    singles: bool = True,
    progress: bool = False,
) -> HeldOutSet:
    """Cross-fit every policy the benchmark compares.

    Policies: never, always, oracle; the fused feature sets of the calibration study
    (uncertainty, sparsity, both - prefill and prefill+draft - question-only and question +
    model signals); each model feature alone (``singles``); popularity on PopQA rows.

    Raises:
        PolicyError: too few correct (or wrong) closed-book answers to cross-validate at all.
    """
    from tqdm.auto import tqdm

    lab = table.labelled
    n = table.n
    everywhere = np.ones(n, dtype=bool)
    splits = make_splits(lab.y, lab.groups, n_splits=folds, seed=seed)
    inner = min(folds, 5)
    shared_inner: list[Splits] | None
    try:
        shared_inner = [
            make_splits(lab.y[train], lab.groups[train], n_splits=inner, seed=seed)
            for train, _ in splits
        ]
    except PolicyError:  # too few correct answers in a training fold: every fit will say so
        shared_inner = None
    out: dict[str, HeldOutPolicy] = {
        "never": HeldOutPolicy(
            "never", "baseline", "none", (), everywhere, fixed_retrieve=np.zeros(n, dtype=bool)
        ),
        "always": HeldOutPolicy(
            "always", "baseline", "none", (), everywhere, fixed_retrieve=np.ones(n, dtype=bool)
        ),
        "oracle": HeldOutPolicy(
            "oracle",
            "oracle",
            "none",
            (),
            everywhere,
            score=lab.y.astype(np.float64),
            p_known=lab.y.astype(np.float64),
            fixed_retrieve=lab.y == 0,
        ),
    }
    skipped: dict[str, str] = {}
    jobs: list[tuple[str, Family, list[str], NDArray[np.float64], NDArray[np.bool_]]] = []
    for name, names in standard_feature_sets(lab).items():
        jobs.append((name, "fused", names, lab.matrix(names), everywhere))
    pop_rows = np.isfinite(lab.popularity)
    if pop_rows.any():
        log_pop = np.log10(1.0 + np.where(pop_rows, lab.popularity, 0.0))[:, None]
        jobs.append((POPULARITY, "popularity", ["log10_s_pop"], log_pop, pop_rows))
    else:
        skipped[POPULARITY] = "no question has PopQA popularity (s_pop)"
    if singles:
        specs = feature_specs()
        for name in lab.features:
            model_signal = name in specs and specs[name].family in ("sparsity", "uncertainty")
            if model_signal and np.ptp(lab.features[name]) > 0:
                jobs.append((name, "single", [name], lab.features[name][:, None], everywhere))
    for name, family, names, x, rows in tqdm(
        jobs, desc="cross-fitting policies", unit="policy", disable=not progress
    ):
        try:
            score, p_known, fold_preds = cross_fit(
                x,
                table,
                names,
                splits,
                rows,
                calibration=calibration,
                inner_folds=inner,
                seed=seed,
                inner_splits=shared_inner if rows.all() and shared_inner else None,
            )
        except PolicyError as exc:
            skipped[name] = str(exc)
            log.warning("policy %s not fitted: %s", name, exc)
            continue
        stage = "metadata" if family == "popularity" else _stage(names)
        out[name] = HeldOutPolicy(
            name, family, stage, tuple(names), rows, score, p_known, fold_preds
        )
    return HeldOutSet(out, splits, skipped)
