"""The calibration study behind ``knowgate calibrate``: which signals predict closed-book
correctness, on held-out folds, and how well the fused policy is calibrated.

Every held-out number is out-of-fold (:mod:`knowgate.evaluation.cross_fitting`): grouped (by
normalised question), stratified K-fold over the pooled datasets; a fused set chooses its
feature group and ``C`` and fits its calibrator inside the training folds (nested), and a single
feature's direction - popularity's included - is chosen on the training folds. Reported
(:class:`CalibrationSummary`):

- each single feature's AUROC with its direction: in-sample (labelled so), held-out, and within
  PopQA relation (of the held-out score);
- fused feature sets - uncertainty-only, sparsity-only, both, question-only, model+question -
  with AUROC (bootstrap CI), ECE (15 bins) and Brier before/after calibration, and AUROC within
  PopQA relation (the template confound) and per dataset;
- for the selected set: per PopQA popularity bucket and per relation (with the relation's
  constant-answer prior, the label-prior trap).
"""  # noqa: D205

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.evaluation.cross_fitting import (
    CrossFit,
    Learner,
    Recipe,
    Splits,
    cross_fit,
    held_out_signed,
    outer_splits,
)
from knowgate.evaluation.labelled import LabelledTable, family_stage, standard_feature_sets
from knowgate.evaluation.metrics import (
    POPULARITY_BUCKETS,
    auroc,
    auroc_with_direction,
    bootstrap_ci,
    brier_score,
    expected_calibration_error,
    popularity_bucket,
    stratified_auroc,
)
from knowgate.evaluation.reporting import Interval, finite, to_jsonable
from knowgate.evaluation.scoring import normalize_answer
from knowgate.policy.selection import FeatureGroups

SELECTED = "selected"
POPULARITY_SINGLE = "s_pop (metadata, PopQA rows)"


# ----------------------------------------------------------------------------- typed summary
@dataclass(frozen=True)
class DatasetAccuracy:
    """Closed-book accuracy of one dataset.

    Attributes:
        n: questions.
        closed_book_accuracy: share answered correctly closed-book.
        echo_rejected: answers whose only alias match was an echo of the question.
    """

    n: int
    closed_book_accuracy: float | None
    echo_rejected: int


@dataclass(frozen=True)
class FusedSetResult:
    """Held-out metrics of one fused feature set.

    Attributes:
        features: its features.
        auroc: of the logistic regression's own score.
        auroc_ci95: bootstrap interval of ``auroc`` (``None`` without bootstrap).
        auroc_calibrated: of the calibrated probability (isotonic adds ties).
        auroc_within_relation: over pairs within a PopQA relation only.
        auroc_per_dataset: per dataset.
        ece_before: ECE of the raw probability.
        ece_after: ECE of the calibrated probability.
        brier_before: Brier of the raw probability.
        brier_after: Brier of the calibrated probability.
        brier_skill_after: 1 - Brier / Brier of always predicting the base rate.
        choices_per_fold: what the recipe chose (feature group and ``C``) on each outer fold's
            training rows.
    """

    features: tuple[str, ...]
    auroc: float | None
    auroc_ci95: Interval | None
    auroc_calibrated: float | None
    auroc_within_relation: float | None
    auroc_per_dataset: dict[str, float | None]
    ece_before: float | None
    ece_after: float | None
    brier_before: float | None
    brier_after: float | None
    brier_skill_after: float | None
    choices_per_fold: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.features)


@dataclass(frozen=True)
class SingleFeatureResult:
    """One feature alone.

    Attributes:
        family: signal family (``sparsity``, ``uncertainty``, ``question``, ``metadata``).
        stage: ``prefill``, ``draft`` or ``none``.
        direction: the direction chosen on all rows (``higher_is_known`` / ``lower_is_known``).
        auroc_in_sample: AUROC in that direction, on the rows that chose it (optimistic).
        auroc_held_out: AUROC with each fold's direction chosen on its training folds.
        auroc_within_relation: held-out AUROC over pairs within a PopQA relation.
        n: rows where the feature is defined.
    """

    family: str
    stage: str
    direction: str
    auroc_in_sample: float | None
    auroc_held_out: float | None
    auroc_within_relation: float | None
    n: int


@dataclass(frozen=True)
class BestFeature:
    """The single feature with the highest held-out AUROC in some pool."""

    feature: str
    auroc_held_out: float
    direction: str


@dataclass(frozen=True)
class AurocComparison:
    """Paired bootstrap of the AUROC difference of two fused sets (first - second).

    Attributes:
        first: the first set.
        second: the second set.
        difference: pooled AUROC difference with its interval.
        within_relation_difference: the same over within-relation pairs.
    """

    first: str
    second: str
    difference: Interval
    within_relation_difference: Interval | None


@dataclass(frozen=True)
class Breakdown:
    """The selected policy on a subset (a popularity bucket, a relation).

    Attributes:
        n: questions.
        accuracy: closed-book accuracy.
        auroc: held-out AUROC of the selected set.
        ece: its ECE after calibration.
        mean_p_known: its mean calibrated p(known).
    """

    n: int
    accuracy: float | None
    auroc: float | None
    ece: float | None
    mean_p_known: float | None


@dataclass(frozen=True)
class RelationPrior:
    """The label-prior trap of a PopQA relation.

    Attributes:
        constant_answer: the relation's most common gold object.
        constant_answer_accuracy: accuracy of always answering it.
        top_matched_answer: the most common alias among the model's correct answers.
        top_matched_share_of_correct: its share of them.
    """

    constant_answer: str | None
    constant_answer_accuracy: float | None
    top_matched_answer: str | None
    top_matched_share_of_correct: float | None


@dataclass(frozen=True)
class StudyTargets:
    """The study's targets.

    Attributes:
        fused_auroc_above_best_selected_single: the selected fused set ranks better, held-out,
            than its best single feature.
        ece_after_at_most_0_05: the selected set's calibrated ECE is at most 0.05.
    """

    fused_auroc_above_best_selected_single: bool
    ece_after_at_most_0_05: bool


@dataclass(frozen=True)
class CalibrationSummary:
    """Everything ``report.json`` holds (see the module docstring)."""

    n_questions: int
    n_correct: int
    closed_book_accuracy: float | None
    calibration: str
    folds: int
    seed: int
    bootstrap_resamples: int
    datasets: dict[str, DatasetAccuracy]
    selected_features: tuple[str, ...]
    best_single_feature: BestFeature | None
    best_single_prefill_feature: BestFeature | None
    best_single_selected_feature: BestFeature | None
    fused: dict[str, FusedSetResult]
    single_features: dict[str, SingleFeatureResult]
    comparisons: dict[str, AurocComparison]
    per_popularity_bucket: dict[str, Breakdown]
    per_relation: dict[str, tuple[Breakdown, RelationPrior]]
    targets: StudyTargets

    @property
    def selected(self) -> FusedSetResult:
        """The fused set of the policy being fitted."""
        return self.fused[SELECTED]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``report.json``)."""
        out: dict[str, Any] = to_jsonable(self)
        for name, fused in self.fused.items():
            out["fused"][name]["n_features"] = fused.n_features
        out["per_relation"] = {
            k: {**to_jsonable(b), **to_jsonable(p)} for k, (b, p) in self.per_relation.items()
        }
        return out


@dataclass(frozen=True)
class StudyResult:
    """The study's numbers and the held-out predictions behind its plots."""

    summary: CalibrationSummary
    predictions: dict[str, CrossFit]
    single_scores: dict[str, NDArray[np.float64]]


# -------------------------------------------------------------------------------- the study
def _r(value: float | None) -> float | None:
    return finite(value)


def _bucket_rows(table: LabelledTable) -> dict[str, NDArray[np.bool_]]:
    buckets = np.asarray([popularity_bucket(p) or "" for p in table.popularity])
    return {name: buckets == name for name, _, _ in POPULARITY_BUCKETS if (buckets == name).any()}


def _within_relation(table: LabelledTable, score: NDArray[np.float64]) -> float | None:
    rel = (table.relations != "") & np.isfinite(score)
    if not rel.any():
        return None
    return _r(stratified_auroc(table.y[rel], score[rel], table.relations[rel]).auroc)


def _single(
    table: LabelledTable,
    x: NDArray[np.float64],
    rows: NDArray[np.bool_],
    splits: Splits,
    family: str,
    stage: str,
) -> tuple[SingleFeatureResult, NDArray[np.float64]]:
    y = table.y
    in_sample, direction = auroc_with_direction(y[rows], x[rows])
    held = held_out_signed(np.where(rows, x, 0.0), y, splits, rows=rows)
    result = SingleFeatureResult(
        family=family,
        stage=stage,
        direction=direction,
        auroc_in_sample=_r(in_sample),
        auroc_held_out=_r(auroc(y[rows], held[rows])),
        auroc_within_relation=_within_relation(table, held),
        n=int(rows.sum()),
    )
    return result, held


def fused_set_result(
    table: LabelledTable, names: Sequence[str], cf: CrossFit, *, n_boot: int, seed: int
) -> FusedSetResult:
    """Held-out metrics of one cross-fitted policy (any learner or recipe)."""
    y = table.y
    ci = bootstrap_ci(auroc, y, cf.score, n_resamples=n_boot, seed=seed) if n_boot else None
    base = brier_score(y, np.full(y.size, y.mean()))
    return FusedSetResult(
        features=tuple(names),
        auroc=_r(auroc(y, cf.score)),
        auroc_ci95=None if ci is None else Interval.of(ci.estimate, ci.low, ci.high),
        auroc_calibrated=_r(auroc(y, cf.p_known)),
        auroc_within_relation=_within_relation(table, cf.score),
        auroc_per_dataset={
            name: _r(auroc(y[table.datasets == name], cf.score[table.datasets == name]))
            for name in dict.fromkeys(table.datasets.tolist())
        },
        ece_before=_r(expected_calibration_error(y, cf.score)),
        ece_after=_r(expected_calibration_error(y, cf.p_known)),
        brier_before=_r(brier_score(y, cf.score)),
        brier_after=_r(brier_score(y, cf.p_known)),
        # Skill against always predicting the base rate: with few correct answers ECE and Brier
        # are small for any near-constant predictor, so this is the number that says more.
        brier_skill_after=_r(1.0 - brier_score(y, cf.p_known) / base) if base > 0 else None,
        choices_per_fold=tuple(f.choice.label for f in cf.folds if f.choice is not None),
    )


def _relation_prior(table: LabelledTable, mask: NDArray[np.bool_]) -> RelationPrior:
    """The label-prior trap: how far one constant answer goes on a relation."""
    idx = np.flatnonzero(mask)
    objects = Counter(
        normalize_answer(str(table.records[i].example.metadata.get("obj") or "")) for i in idx
    )
    objects.pop("", None)
    constant, _ = objects.most_common(1)[0] if objects else ("", 0)
    constant_acc = (
        float(
            np.mean(
                [
                    any(
                        normalize_answer(a) == constant
                        for a in table.records[i].example.golden_answers
                    )
                    for i in idx
                ]
            )
        )
        if constant
        else None
    )
    correct = [i for i in idx if table.y[i]]
    answers = Counter(normalize_answer(table.records[i].score.matched_alias or "") for i in correct)
    top_answer, top_count = answers.most_common(1)[0] if answers else ("", 0)
    return RelationPrior(
        constant_answer=constant or None,
        constant_answer_accuracy=_r(constant_acc),
        top_matched_answer=top_answer or None,
        top_matched_share_of_correct=_r(top_count / len(correct)) if correct else None,
    )


def _breakdown(table: LabelledTable, mask: NDArray[np.bool_], cf: CrossFit) -> Breakdown:
    y = table.y[mask]
    return Breakdown(
        n=int(mask.sum()),
        accuracy=_r(float(y.mean())),
        auroc=_r(auroc(y, cf.score[mask])),
        ece=_r(expected_calibration_error(y, cf.p_known[mask])),
        mean_p_known=_r(float(cf.p_known[mask].mean())),
    )


COMPARISONS: tuple[tuple[str, str, str], ...] = (
    (
        "sparsity adds over uncertainty (prefill)",
        "uncertainty+sparsity (prefill)",
        "uncertainty (prefill)",
    ),
    (
        "sparsity adds over uncertainty (prefill+draft)",
        "uncertainty+sparsity (prefill+draft)",
        "uncertainty (prefill+draft)",
    ),
    ("prefill model signals vs question-only", "uncertainty+sparsity (prefill)", "question-only"),
    (
        "model signals add over question-only (prefill)",
        "question+uncertainty+sparsity (prefill)",
        "question-only",
    ),
    (
        "sparsity adds over question+uncertainty (prefill)",
        "question+uncertainty+sparsity (prefill)",
        "question+uncertainty (prefill)",
    ),
)


def _comparisons(
    table: LabelledTable, predictions: Mapping[str, CrossFit], *, n_boot: int, seed: int
) -> dict[str, AurocComparison]:
    """Paired bootstrap of AUROC differences between fused sets, pooled and within relation."""
    y = table.y
    rel = table.relations != ""
    codes = np.unique(table.relations, return_inverse=True)[1]

    def pooled(yy: Any, a: Any, b: Any) -> float:
        return auroc(yy, a) - auroc(yy, b)

    def within(yy: Any, a: Any, b: Any, g: Any) -> float:
        return stratified_auroc(yy, a, g).auroc - stratified_auroc(yy, b, g).auroc

    out: dict[str, AurocComparison] = {}
    for label, first, second in COMPARISONS:
        if first not in predictions or second not in predictions:
            continue
        a, b = predictions[first].score, predictions[second].score
        within_ci: Interval | None = None
        if n_boot:
            ci = bootstrap_ci(pooled, y, a, b, n_resamples=n_boot, seed=seed)
            diff = Interval.of(ci.estimate, ci.low, ci.high)
            if rel.any():
                ci = bootstrap_ci(
                    within, y[rel], a[rel], b[rel], codes[rel], n_resamples=n_boot, seed=seed
                )
                within_ci = Interval.of(ci.estimate, ci.low, ci.high)
        else:
            diff = Interval.of(pooled(y, a, b))
        out[label] = AurocComparison(first, second, diff, within_ci)
    return out


def _best(pool: Mapping[str, SingleFeatureResult]) -> BestFeature | None:
    ranked = [(v.auroc_held_out or 0.0, k) for k, v in pool.items()]
    if not ranked:
        return None
    score, name = max(ranked)
    return BestFeature(name, score, pool[name].direction)


def run_study(
    table: LabelledTable,
    selected: Sequence[str],
    *,
    calibration: str = "isotonic",
    n_splits: int = 5,
    seed: int = 0,
    bootstrap_resamples: int = 1000,
    progress: bool = False,
    learner: Learner | Recipe | None = None,
) -> StudyResult:
    """Cross-validated evaluation of single features and fused feature sets.

    Args:
        table: the labelled rows.
        selected: the features of the policy being fitted (reported in detail).
        calibration: calibration method of the fused models.
        n_splits: outer (and inner) folds.
        seed: split seed.
        bootstrap_resamples: resamples for the AUROC confidence intervals (0 = none).
        progress: show a progress bar over the fused fits.
        learner: how every fused set is fitted on a training fold (default: the recipe that
            chooses feature group and ``C`` by inner CV, as ``knowgate calibrate`` fits the
            policy it ships).

    Raises:
        PolicyError: too few correct (or wrong) closed-book answers to cross-validate.
    """
    from tqdm.auto import tqdm

    y = table.y
    everywhere = np.ones(y.size, dtype=bool)
    splits = outer_splits(y, table.groups, folds=n_splits, seed=seed)
    feature_sets = standard_feature_sets(table)
    feature_sets[SELECTED] = list(selected)

    singles: dict[str, SingleFeatureResult] = {}
    single_scores: dict[str, NDArray[np.float64]] = {}
    for name in (n for n in table.features if np.ptp(table.features[n]) > 0):
        family, stage = family_stage(name)
        singles[name], single_scores[name] = _single(
            table, table.features[name], everywhere, splits, family, stage
        )
    pop_rows = np.isfinite(table.popularity)
    if pop_rows.any() and np.ptp(table.popularity[pop_rows]) > 0:
        singles[POPULARITY_SINGLE], _ = _single(
            table, np.where(pop_rows, table.popularity, 0.0), pop_rows, splits, "metadata", "none"
        )

    fused: dict[str, FusedSetResult] = {}
    predictions: dict[str, CrossFit] = {}
    recipe = learner if learner is not None else FeatureGroups()
    for set_name, names in tqdm(feature_sets.items(), desc="fused fits", disable=not progress):
        cf = cross_fit(
            table.matrix(names),
            y,
            table.groups,
            names,
            splits,
            calibration=calibration,
            inner_folds=n_splits,
            seed=seed,
            learner=recipe,
        )
        predictions[set_name] = cf
        fused[set_name] = fused_set_result(table, names, cf, n_boot=bootstrap_resamples, seed=seed)

    model_singles = {k: v for k, v in singles.items() if v.family in ("sparsity", "uncertainty")}
    prefill_singles = {k: v for k, v in model_singles.items() if v.stage == "prefill"}
    sel = predictions[SELECTED]
    datasets = {}
    for name in dict.fromkeys(table.datasets.tolist()):
        mask = table.datasets == name
        datasets[name] = DatasetAccuracy(
            n=int(mask.sum()),
            closed_book_accuracy=_r(float(y[mask].mean())),
            echo_rejected=int(
                sum(table.records[i].score.echo_rejected for i in np.flatnonzero(mask))
            ),
        )
    by_bucket = {name: _breakdown(table, mask, sel) for name, mask in _bucket_rows(table).items()}
    by_relation = {}
    for name in sorted(set(table.relations[table.relations != ""].tolist())):
        mask = table.relations == name
        by_relation[name] = (_breakdown(table, mask, sel), _relation_prior(table, mask))

    best_selected = _best({k: v for k, v in singles.items() if k in set(selected)})
    summary = CalibrationSummary(
        n_questions=int(y.size),
        n_correct=int(y.sum()),
        closed_book_accuracy=_r(float(y.mean())),
        calibration=calibration,
        folds=len(splits),
        seed=seed,
        bootstrap_resamples=bootstrap_resamples,
        datasets=datasets,
        selected_features=tuple(selected),
        best_single_feature=_best(model_singles),
        best_single_prefill_feature=_best(prefill_singles),
        best_single_selected_feature=best_selected,
        fused=fused,
        single_features=dict(
            sorted(singles.items(), key=lambda kv: -(kv[1].auroc_held_out or 0.0))
        ),
        comparisons=_comparisons(table, predictions, n_boot=bootstrap_resamples, seed=seed),
        per_popularity_bucket=by_bucket,
        per_relation=by_relation,
        targets=StudyTargets(
            fused_auroc_above_best_selected_single=bool(
                best_selected is not None
                and (fused[SELECTED].auroc or 0.0) > best_selected.auroc_held_out
            ),
            ece_after_at_most_0_05=bool((fused[SELECTED].ece_after or 1.0) <= 0.05),
        ),
    )
    return StudyResult(summary, predictions, single_scores)
