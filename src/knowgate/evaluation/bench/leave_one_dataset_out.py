"""The shipped recipe on traffic unlike its calibration data: leave one dataset out.

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
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.policies import (
    PolicyCandidate,
    cross_fit_candidate,
    inner_splits,
    outer_splits,
)
from knowgate.evaluation.bench.policy_results import outcome_result
from knowgate.evaluation.bench.summary import LeaveOneDatasetOut, LeftOutDataset, PolicyResult
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import GateStage
from knowgate.evaluation.cross_fitting import fit_fold, logistic_learner
from knowgate.evaluation.labelled import LabelledTable, family_stage
from knowgate.evaluation.operating_rules import DEFAULT_RULE, RULES
from knowgate.policy.fitting import make_splits
from knowgate.policy.fused import FusedPolicy, LinearScorer

RECIPE_NAME = "shipped recipe"


@dataclass(frozen=True)
class Recipe:
    """What the shipped policies are: features, model, calibration and operating rule.

    Attributes:
        features: the model signals read (the router's prefill signals).
        calibration: calibration method.
        rule: the operating rule (a key of :data:`~knowgate.evaluation.operating_rules.RULES`).
        folds: inner folds for the calibrator's out-of-fold logits.
        seed: split seed.
    """

    features: tuple[str, ...]
    calibration: str = "sigmoid"
    rule: str = DEFAULT_RULE
    folds: int = 5
    seed: int = 0

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"{len(self.features)} router prefill signals, standardised logistic regression, "
            f"{self.calibration} calibration on inner out-of-fold logits, cut by '{self.rule}' "
            "on the training data"
        )


def shipped_features(table: LabelledTable) -> list[str]:
    """The model signals a default router reads before generation (non-constant ones).

    The shipped policies are fitted on ``knowgate calibrate --features prefill`` over the
    router's default signal configuration; closed-book runs record more positions than that.
    """
    from knowgate.signals import SignalConfig, feature_names

    router = set(feature_names(SignalConfig(), stage="prefill"))
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
        policy: the fitted policy (threshold set; retrieves where p(known) < threshold).
        threshold: the cut the operating rule chose on the training rows.
    """

    policy: FusedPolicy
    threshold: float


Fitter = Callable[[TrainingData, Recipe], RecipeFit]


def fit_recipe(data: TrainingData, recipe: Recipe) -> RecipeFit:
    """Fit the recipe as ``knowgate calibrate`` does, cut by the recipe's rule.

    The cut is chosen on the training rows' calibrated out-of-fold p(known).

    Raises:
        PolicyError: too few correct or wrong answers to fit.
    """
    inner = make_splits(data.y, data.groups, n_splits=recipe.folds, seed=recipe.seed)
    model, calibrator, p_train = fit_fold(
        data.x,
        data.y,
        recipe.features,
        inner,
        calibration=recipe.calibration,
        learner=logistic_learner,
    )
    threshold = float(RULES[recipe.rule](p_train, data.y, data.rag_correct))
    assert isinstance(model, LinearScorer)
    return RecipeFit(FusedPolicy(model, calibrator, threshold=min(1.0, threshold)), threshold)


def _retrieve(fit: RecipeFit, x: NDArray[np.float64]) -> NDArray[np.bool_]:
    p = fit.policy.p_known_matrix(x)
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
    candidate = PolicyCandidate(RECIPE_NAME, "fused", "prefill", tuple(names), x, everywhere)
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
