"""The shipped recipe on traffic unlike its calibration data: leave one dataset out.

Also :func:`leave_one_dataset_out_auroc`: whether each signal's and each main policy's ranking
holds on a dataset it was not fitted on (its AUROC there, fitted - or its direction chosen - on
the other datasets only, beside its cross-fitted in-distribution AUROC).

A user calibrates a gate on some labelled questions and then gates traffic that is not like
them. For each dataset, the whole shipped recipe - the router's prefill signals, standardised
logistic regression, calibration on inner out-of-fold logits, and the default operating rule's
cut chosen on the training data - is fitted on the *other* datasets (any question that also
occurs in the left-out dataset is dropped from training) and applied to the left-out one. Beside
it: the same recipe cross-fitted in-distribution (pooled folds over all datasets, so a fold's fit
has seen other questions of the dataset it scores), and always retrieving on the same questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.policies import (
    Candidate,
    FixedCandidate,
    HeldOutSet,
    PolicyCandidate,
    cross_fit_candidate,
    inner_splits,
    outer_splits,
)
from knowgate.evaluation.bench.policy_results import outcome_result
from knowgate.evaluation.bench.summary import (
    LeaveOneDatasetOut,
    LeaveOneDatasetOutAuroc,
    LeftOutDataset,
    PolicyResult,
    UnseenAuroc,
)
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import GateStage
from knowgate.evaluation.cross_fitting import Learner, ScoreModel, fit_fold, held_out_signed
from knowgate.evaluation.labelled import LabelledTable, family_stage
from knowgate.evaluation.metrics import auroc, column_aurocs
from knowgate.evaluation.operating_rules import DEFAULT_RULE, RULES
from knowgate.evaluation.reporting import finite
from knowgate.policy.base import Policy
from knowgate.policy.calibration import Calibrator
from knowgate.policy.linear import make_splits
from knowgate.policy.selection import Choice, FeatureGroups, as_policy
from knowgate.policy.selection import Recipe as FitRecipe

RECIPE_NAME = "shipped recipe"


@dataclass(frozen=True)
class Recipe:
    """What the shipped policies are: features, model, calibration and operating rule.

    Attributes:
        features: the model signals read (the router's prefill signals).
        calibration: calibration method.
        rule: the operating rule (a key of :data:`~knowgate.evaluation.operating_rules.RULES`).
        folds: inner folds for the calibrator's out-of-fold logits (and the learner's choices).
        seed: split seed.
        learner: the score model: the fused recipe that chooses feature group and ``C`` by
            inner CV on the training data, as ``knowgate calibrate`` fits it.
    """

    features: tuple[str, ...]
    calibration: str = "sigmoid"
    rule: str = DEFAULT_RULE
    folds: int = 5
    seed: int = 0
    learner: Learner | FitRecipe = field(default_factory=FeatureGroups)

    def describe(self) -> str:
        """One line for reports."""
        what = (
            self.learner.describe()
            if isinstance(self.learner, FitRecipe)
            else "standardised logistic regression"
        )
        return (
            f"{len(self.features)} router prefill signals; {what}; {self.calibration} "
            f"calibration on inner out-of-fold logits, cut by '{self.rule}' on the training data"
        )


def shipped_features(table: LabelledTable) -> list[str]:
    """The model signals a default router reads before generation (non-constant ones).

    The shipped policies are fitted on ``knowgate calibrate --features prefill`` over the
    router's default signal configuration; closed-book runs record more positions than that.
    """
    from knowgate.signals import SignalConfig, feature_names

    router = set(feature_names(SignalConfig(), stage="prefill", backend="any"))
    return [
        n
        for n in table.features
        if n in router
        and family_stage(n)[0] in ("sparsity", "uncertainty")
        and np.ptp(table.features[n]) > 0
    ]


@dataclass(frozen=True)
class TrainingData:
    """What a recipe is fitted on.

    Attributes:
        ids: ``dataset/id`` of every training row.
        x: ``[n, k]`` features, columns the recipe's features.
        y: closed-book correctness.
        rag_correct: correctness with retrieval (the operating rule reads it).
        groups: cross-validation groups.
    """

    ids: tuple[str, ...]
    x: NDArray[np.float64]
    y: NDArray[np.int64]
    rag_correct: NDArray[np.int64]
    groups: NDArray[np.str_]


@dataclass(frozen=True)
class RecipeFit:
    """A recipe fitted on training data: a policy with its cut.

    Attributes:
        policy: the fitted policy (threshold set; retrieves where p(known) < threshold); it
            reads the features its recipe chose.
        threshold: the cut the operating rule chose on the training rows.
        model: the fitted score model, reading the recipe's full feature matrix.
        calibrator: its calibrator.
        choice: what the recipe chose on the training rows.
    """

    policy: Policy
    threshold: float
    model: ScoreModel
    calibrator: Calibrator
    choice: Choice | None = None

    def p_known(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated p(known) of rows of the recipe's full feature matrix."""
        return np.clip(self.calibrator.apply(self.model.logits(x)), 0.0, 1.0)


Fitter = Callable[[TrainingData, Recipe], RecipeFit]


def fit_recipe(data: TrainingData, recipe: Recipe) -> RecipeFit:
    """Fit the recipe as ``knowgate calibrate`` does, cut by the recipe's rule.

    The cut is chosen on the training rows' calibrated out-of-fold p(known).

    Raises:
        PolicyError: too few correct or wrong answers to fit.
    """
    inner = make_splits(data.y, data.groups, n_splits=recipe.folds, seed=recipe.seed)
    fold = fit_fold(
        data.x,
        data.y,
        recipe.features,
        inner,
        calibration=recipe.calibration,
        learner=recipe.learner,
    )
    threshold = float(RULES[recipe.rule](fold.p_train, data.y, data.rag_correct))
    policy = as_policy(fold.model, fold.calibrator, threshold=min(1.0, threshold))
    return RecipeFit(policy, threshold, fold.model, fold.calibrator, fold.choice)


def _retrieve(fit: RecipeFit, x: NDArray[np.float64]) -> NDArray[np.bool_]:
    p = fit.p_known(x)
    return np.asarray((p < fit.threshold) | (fit.threshold >= 1.0))


def leave_one_dataset_out(
    table: BenchTable,
    recipe: Recipe,
    *,
    folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    fitter: Fitter = fit_recipe,
) -> LeaveOneDatasetOut:
    """Fit the recipe without each dataset, apply it there; compare with in-distribution.

    Args:
        table: both branches of every question.
        recipe: what to fit.
        folds: outer folds of the in-distribution cross-fit.
        n_boot: bootstrap resamples for the intervals.
        seed: split and bootstrap seed.
        fitter: fits the recipe on training data (a test hook).
    """
    lab = table.labelled
    names = list(recipe.features)
    ids = table.row_ids()
    rows_by_dataset = {d: lab.datasets == d for d in dict.fromkeys(lab.datasets.tolist())}
    skipped: dict[str, str] = {}
    if not names:
        skipped = dict.fromkeys(rows_by_dataset, "the table has none of the recipe's features")
        return LeaveOneDatasetOut(RECIPE_NAME, (), {}, None, None, None, skipped)
    if len(rows_by_dataset) < 2:
        skipped = dict.fromkeys(rows_by_dataset, "one dataset only: nothing to leave out")
        return LeaveOneDatasetOut(RECIPE_NAME, tuple(names), {}, None, None, None, skipped)

    x = lab.matrix(names)
    # In distribution: the same recipe, cross-fitted on pooled folds, cut per fold.
    everywhere = np.ones(table.n, dtype=bool)
    candidate = PolicyCandidate(
        RECIPE_NAME, "fused", "prefill", tuple(names), x, everywhere, learner=recipe.learner
    )
    splits = outer_splits(lab.y, lab.groups, folds=folds, seed=seed)
    inner = min(folds, recipe.folds)
    pooled_fit = cross_fit_candidate(
        candidate,
        lab.y,
        lab.groups,
        splits,
        calibration=recipe.calibration,
        inner_folds=inner,
        seed=recipe.seed,
        shared_inner=inner_splits(splits, lab.y, lab.groups, folds=inner, seed=recipe.seed),
    )
    in_dist, _ = pooled_fit.decide(RULES[recipe.rule], table)

    unseen = np.ones(table.n, dtype=bool)
    decided = np.zeros(table.n, dtype=bool)
    out: dict[str, LeftOutDataset] = {}

    def result(name: str, retrieve: NDArray[np.bool_], rows: NDArray[np.bool_]) -> PolicyResult:
        stage: GateStage = "none" if name == "always" else "prefill"
        return outcome_result(
            name,
            "baseline" if name == "always" else "fused",
            stage,
            table.outcome(retrieve.astype(np.float64), stage, rows),
            table,
            rows,
            n_features=0 if name == "always" else len(names),
            n_boot=n_boot,
            seed=seed,
            random_reference=name != "always",
        )

    always = np.ones(table.n, dtype=bool)
    for dataset, test in rows_by_dataset.items():
        train = ~test & ~np.isin(lab.groups, lab.groups[test])
        data = TrainingData(
            ids=tuple(ids[i] for i in np.flatnonzero(train)),
            x=x[train],
            y=lab.y[train],
            rag_correct=table.rag_correct[train],
            groups=lab.groups[train],
        )
        try:
            fit = fitter(data, recipe)
        except (PolicyError, ValueError) as exc:
            skipped[dataset] = str(exc)
            continue
        unseen[test] = _retrieve(fit, x[test])
        decided |= test
        out[dataset] = LeftOutDataset(
            dataset=dataset,
            n=int(test.sum()),
            training_questions=int(train.sum()),
            threshold=fit.threshold,
            unseen=result(f"{RECIPE_NAME}, fitted without {dataset}", unseen, test),
            in_distribution=result(f"{RECIPE_NAME}, cross-fitted on all datasets", in_dist, test),
            always=result("always", always, test),
        )
    pooled = decided if decided.any() else None
    return LeaveOneDatasetOut(
        recipe=f"{RECIPE_NAME}: {recipe.describe()}",
        features=tuple(names),
        datasets=out,
        pooled_unseen=None if pooled is None else result("unseen (pooled)", unseen, pooled),
        pooled_in_distribution=None
        if pooled is None
        else result("in-distribution (pooled)", in_dist, pooled),
        pooled_always=None if pooled is None else result("always", always, pooled),
        skipped=skipped,
    )


def recipe_for(
    table: LabelledTable, *, calibration: str, seed: int, features: Sequence[str] | None = None
) -> Recipe:
    """The shipped recipe on this table's features (``features`` overrides the signal set)."""
    return Recipe(
        features=tuple(features if features is not None else shipped_features(table)),
        calibration=calibration,
        seed=seed,
    )


def _held_out_rows(
    table: BenchTable, dataset: str, rows: NDArray[np.bool_]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(training rows: other datasets minus questions shared with ``dataset``, its rows)."""
    lab = table.labelled
    test = rows & (lab.datasets == dataset)
    train = rows & (lab.datasets != dataset) & ~np.isin(lab.groups, lab.groups[test])
    return train, test


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return finite(float(np.mean(kept))) if kept else None


def leave_one_dataset_out_auroc(
    table: BenchTable,
    held: HeldOutSet,
    candidates: Sequence[Candidate],
    *,
    calibration: str = "sigmoid",
    folds: int = 5,
    seed: int = 0,
) -> LeaveOneDatasetOutAuroc:
    """Each policy and model signal scored on every dataset by a fit that never saw it.

    A fitted policy is fitted - its recipe's choices included - on the other datasets (questions
    shared with the left-out one dropped); a fixed rule needs no fit; a single signal's direction
    is chosen on the other datasets. ``mean`` averages the per-dataset AUROCs.

    Args:
        table: both branches.
        held: the cross-fitted predictions (the in-distribution AUROCs).
        candidates: the policies to fit without each dataset.
        calibration: calibration of the fits (it does not change a ranking; kept for parity).
        folds: inner folds of each fit.
        seed: split seed.
    """
    lab = table.labelled
    names = list(dict.fromkeys(lab.datasets.tolist()))
    skipped: dict[str, str] = {}
    if len(names) < 2:
        return LeaveOneDatasetOutAuroc(tuple(names), {}, {}, {"all": "one dataset only"})
    y = lab.y
    policies: dict[str, dict[str, UnseenAuroc]] = {}
    for candidate in candidates:
        in_dist = held.policies.get(candidate.name)
        if in_dist is None or in_dist.score is None:
            continue
        per: dict[str, UnseenAuroc] = {}
        for dataset in names:
            train, test = _held_out_rows(table, dataset, candidate.rows)
            if not test.any():
                continue
            inside = finite(auroc(y[test], in_dist.score[test]))
            if isinstance(candidate, FixedCandidate):
                per[dataset] = UnseenAuroc(finite(auroc(y[test], candidate.score[test])), inside)
                continue
            try:
                inner = make_splits(y[train], lab.groups[train], n_splits=min(folds, 5), seed=seed)
                fold = fit_fold(
                    candidate.x[train],
                    y[train],
                    candidate.features,
                    inner,
                    calibration=calibration,
                    learner=candidate.learner,
                )
            except (PolicyError, ValueError) as exc:
                skipped[f"{candidate.name} without {dataset}"] = str(exc)
                continue
            unseen = fold.model.logits(candidate.x[test])
            per[dataset] = UnseenAuroc(finite(auroc(y[test], unseen)), inside)
        if per:
            per["mean"] = UnseenAuroc(
                _mean([u.unseen for u in per.values()]),
                _mean([u.in_distribution for u in per.values()]),
            )
            policies[candidate.name] = per
    signal_names = [
        n
        for n in lab.features
        if family_stage(n)[0] in ("sparsity", "uncertainty") and np.ptp(lab.features[n]) > 0
    ]
    signals: dict[str, dict[str, UnseenAuroc]] = {n: {} for n in signal_names}
    if signal_names:
        x = lab.matrix(signal_names)
        cross_fitted = held_out_signed(x, y, held.splits)
        everywhere = np.ones(table.n, dtype=bool)
        for dataset in names:
            train, test = _held_out_rows(table, dataset, everywhere)
            direction = np.where(column_aurocs(y[train], x[train]) < 0.5, -1.0, 1.0)
            left_out = column_aurocs(y[test], x[test] * direction)
            within = column_aurocs(y[test], cross_fitted[test])
            for j, name in enumerate(signal_names):
                signals[name][dataset] = UnseenAuroc(finite(left_out[j]), finite(within[j]))
        for per in signals.values():
            per["mean"] = UnseenAuroc(
                _mean([u.unseen for u in per.values()]),
                _mean([u.in_distribution for u in per.values()]),
            )
    return LeaveOneDatasetOutAuroc(tuple(names), policies, signals, skipped)
