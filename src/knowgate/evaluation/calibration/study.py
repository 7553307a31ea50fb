"""The calibration study behind ``knowgate calibrate``: which signals predict closed-book
correctness, on held-out folds, and how well the fused policy is calibrated.

Every number is out-of-fold: grouped (by normalised question), stratified K-fold over the pooled
datasets; a fused model's calibrator is fitted inside the training folds (nested), and a single
feature's direction is chosen on the training folds. Reported:

- each single feature's AUROC with its direction (pooled in-sample, held-out, within relation);
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

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.closed_book import ClosedBookRecord
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
from knowgate.evaluation.scoring import normalize_answer
from knowgate.policy.fitting import CrossFitted, cross_fitted_p_known, make_splits
from knowgate.signals import feature_specs
from knowgate.signals.question import QUESTION_FEATURES, compute_question_features

FEATURE_GROUPS = ("prefill", "draft", "sparsity", "uncertainty", "question", "model", "all")


@dataclass(frozen=True)
class LabelledTable:
    """Closed-book records as arrays: one row per question.

    Attributes:
        records: the records, in row order.
        features: feature name -> values (model signals and question-only features).
        y: 1 when the closed-book answer is correct (In-Accuracy, echo-guarded).
        groups: normalised question text (cross-validation groups).
        datasets: dataset name per row.
        relations: PopQA relation per row (``""`` when unknown).
        popularity: PopQA ``s_pop`` per row (NaN when unknown).
    """

    records: tuple[ClosedBookRecord, ...]
    features: dict[str, NDArray[np.float64]]
    y: NDArray[np.int64]
    groups: NDArray[np.str_]
    datasets: NDArray[np.str_]
    relations: NDArray[np.str_]
    popularity: NDArray[np.float64]

    def matrix(self, names: Sequence[str]) -> NDArray[np.float64]:
        """``[n, len(names)]`` feature matrix."""
        return np.column_stack([self.features[n] for n in names])


def build_table(records: Sequence[ClosedBookRecord]) -> LabelledTable:
    """Join model features with question-only features and labels.

    Raises:
        DataError: no records, or records with different model-feature sets.
    """
    if not records:
        raise DataError("no closed-book records to study")
    model_names = sorted(records[0].features)
    cols: dict[str, list[float]] = {n: [] for n in model_names}
    cols.update({n: [] for n in QUESTION_FEATURES})
    for rec in records:
        if sorted(rec.features) != model_names:
            raise DataError(
                f"record {rec.id} of {rec.dataset} has a different feature set; were the "
                "closed-book runs made with different knowgate versions?"
            )
        for n in model_names:
            cols[n].append(rec.features[n])
        for n, v in compute_question_features(rec.example.question, rec.example.metadata).items():
            cols[n].append(v)
    return LabelledTable(
        records=tuple(records),
        features={n: np.asarray(v, dtype=np.float64) for n, v in cols.items()},
        y=np.asarray([int(r.correct) for r in records], dtype=np.int64),
        groups=np.asarray([r.example.group for r in records]),
        datasets=np.asarray([r.dataset for r in records]),
        relations=np.asarray([r.example.relation or "" for r in records]),
        popularity=np.asarray(
            [np.nan if r.example.popularity is None else r.example.popularity for r in records]
        ),
    )


def _family_stage(name: str) -> tuple[str, str]:
    spec = feature_specs().get(name)
    if spec is not None:
        return spec.family, spec.stage
    return ("question", "prefill") if name in QUESTION_FEATURES else ("unknown", "unknown")


def features_in(table: LabelledTable, group: str) -> list[str]:
    """Feature names of ``table`` in a named group (see :data:`FEATURE_GROUPS`)."""
    out = []
    for name in table.features:
        family, stage = _family_stage(name)
        model = family in ("sparsity", "uncertainty")
        keep = {
            "prefill": model and stage == "prefill",
            "draft": model and stage == "draft",
            "sparsity": family == "sparsity",
            "uncertainty": family == "uncertainty",
            "question": family == "question",
            "model": model,
            "all": True,
        }[group]
        if keep:
            out.append(name)
    return out


def resolve_features(table: LabelledTable, spec: Sequence[str]) -> list[str]:
    """Expand feature group names and explicit names (``prefill``, ``next_token_entropy``).

    Raises:
        ConfigError: an unknown name.
    """
    names: list[str] = []
    for token in spec:
        for part in (p.strip() for p in token.split(",")):
            if not part:
                continue
            if part in FEATURE_GROUPS:
                names.extend(features_in(table, part))
            elif part in table.features:
                names.append(part)
            else:
                raise ConfigError(
                    f"unknown feature {part!r}; use a feature name or one of "
                    f"{', '.join(FEATURE_GROUPS)}"
                )
    unique = list(dict.fromkeys(names))
    if not unique:
        raise ConfigError("no features selected")
    return unique


def _non_constant(table: LabelledTable, names: Sequence[str]) -> list[str]:
    return [n for n in names if np.ptp(table.features[n]) > 0]


def standard_feature_sets(table: LabelledTable) -> dict[str, list[str]]:
    """The fused comparisons the issue asks for (constant columns dropped)."""
    prefill_u = [n for n in features_in(table, "prefill") if _family_stage(n)[0] == "uncertainty"]
    sparsity = features_in(table, "sparsity")
    draft = features_in(table, "draft")
    question = _non_constant(table, features_in(table, "question"))
    sets = {
        "uncertainty (prefill)": prefill_u,
        "sparsity (prefill)": sparsity,
        "uncertainty+sparsity (prefill)": prefill_u + sparsity,
        "question-only": question,
        "question+uncertainty (prefill)": question + prefill_u,
        "question+uncertainty+sparsity (prefill)": question + prefill_u + sparsity,
        "uncertainty (prefill+draft)": prefill_u + draft,
        "uncertainty+sparsity (prefill+draft)": prefill_u + draft + sparsity,
        "question+all model (prefill+draft)": question + prefill_u + draft + sparsity,
    }
    return {k: _non_constant(table, v) for k, v in sets.items() if _non_constant(table, v)}


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _bucket_rows(table: LabelledTable) -> dict[str, NDArray[np.bool_]]:
    buckets = np.asarray([popularity_bucket(p) or "" for p in table.popularity])
    return {name: buckets == name for name, _, _ in POPULARITY_BUCKETS if (buckets == name).any()}


def _held_out_single(
    table: LabelledTable, name: str, splits: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]]
) -> NDArray[np.float64]:
    x = table.features[name]
    score = np.empty_like(x)
    for train, test in splits:
        _, direction = auroc_with_direction(table.y[train], x[train])
        score[test] = x[test] if direction == "higher_is_known" else -x[test]
    return score


def _relation_rows(table: LabelledTable) -> NDArray[np.bool_]:
    return np.asarray(table.relations != "")


def _fused_metrics(
    table: LabelledTable, cf: CrossFitted, *, n_boot: int, seed: int
) -> dict[str, Any]:
    y = table.y
    rel = _relation_rows(table)
    ci = bootstrap_ci(auroc, y, cf.p_raw, n_resamples=n_boot, seed=seed) if n_boot else None
    within = (
        stratified_auroc(y[rel], cf.p_raw[rel], table.relations[rel]).auroc
        if rel.any()
        else float("nan")
    )
    per_dataset = {
        name: _nan_to_none(auroc(y[table.datasets == name], cf.p_raw[table.datasets == name]))
        for name in dict.fromkeys(table.datasets.tolist())
    }
    return {
        "auroc": _nan_to_none(auroc(y, cf.p_raw)),
        "auroc_ci95": None if ci is None else [_nan_to_none(ci.low), _nan_to_none(ci.high)],
        "auroc_calibrated": _nan_to_none(auroc(y, cf.p_calibrated)),
        "auroc_within_relation": _nan_to_none(within),
        "auroc_per_dataset": per_dataset,
        "ece_before": _nan_to_none(expected_calibration_error(y, cf.p_raw)),
        "ece_after": _nan_to_none(expected_calibration_error(y, cf.p_calibrated)),
        "brier_before": _nan_to_none(brier_score(y, cf.p_raw)),
        "brier_after": _nan_to_none(brier_score(y, cf.p_calibrated)),
        # Skill against always predicting the base rate: with few correct answers ECE and Brier
        # are small for any near-constant predictor, so this is the number that says more.
        "brier_skill_after": _nan_to_none(
            1.0 - brier_score(y, cf.p_calibrated) / brier_score(y, np.full(y.size, y.mean()))
        ),
    }


def _relation_prior(table: LabelledTable, mask: NDArray[np.bool_]) -> dict[str, Any]:
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
        else float("nan")
    )
    correct = [i for i in idx if table.y[i]]
    answers = Counter(normalize_answer(table.records[i].score.matched_alias or "") for i in correct)
    top_answer, top_count = answers.most_common(1)[0] if answers else ("", 0)
    return {
        "constant_answer": constant or None,
        "constant_answer_accuracy": _nan_to_none(constant_acc),
        "top_matched_answer": top_answer or None,
        "top_matched_share_of_correct": _nan_to_none(top_count / len(correct)) if correct else None,
    }


def _breakdown(
    table: LabelledTable, mask: NDArray[np.bool_], cf: CrossFitted | None
) -> dict[str, Any]:
    y = table.y[mask]
    out: dict[str, Any] = {"n": int(mask.sum()), "accuracy": _nan_to_none(float(y.mean()))}
    if cf is not None:
        out.update(
            auroc=_nan_to_none(auroc(y, cf.p_raw[mask])),
            ece=_nan_to_none(expected_calibration_error(y, cf.p_calibrated[mask])),
            mean_p_known=_nan_to_none(float(cf.p_calibrated[mask].mean())),
        )
    return out


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
    table: LabelledTable, predictions: Mapping[str, CrossFitted], *, n_boot: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of AUROC differences between fused sets, pooled and within relation."""
    y = table.y
    rel = _relation_rows(table)
    codes = np.unique(table.relations, return_inverse=True)[1]

    def pooled(yy: Any, a: Any, b: Any) -> float:
        return auroc(yy, a) - auroc(yy, b)

    def within(yy: Any, a: Any, b: Any, g: Any) -> float:
        return stratified_auroc(yy, a, g).auroc - stratified_auroc(yy, b, g).auroc

    out: dict[str, dict[str, Any]] = {}
    for label, first, second in COMPARISONS:
        if first not in predictions or second not in predictions:
            continue
        a, b = predictions[first].p_raw, predictions[second].p_raw
        entry: dict[str, Any] = {"first": first, "second": second}
        if n_boot:
            ci = bootstrap_ci(pooled, y, a, b, n_resamples=n_boot, seed=seed)
            entry["auroc_difference"] = [_nan_to_none(v) for v in (ci.estimate, ci.low, ci.high)]
            if rel.any():
                ci = bootstrap_ci(
                    within, y[rel], a[rel], b[rel], codes[rel], n_resamples=n_boot, seed=seed
                )
                entry["within_relation_difference"] = [
                    _nan_to_none(v) for v in (ci.estimate, ci.low, ci.high)
                ]
        else:
            entry["auroc_difference"] = [_nan_to_none(pooled(y, a, b)), None, None]
        out[label] = entry
    return out


@dataclass(frozen=True)
class StudyResult:
    """The study's numbers (``summary``) and the held-out predictions behind its plots."""

    summary: dict[str, Any]
    predictions: dict[str, CrossFitted]
    single_scores: dict[str, NDArray[np.float64]]


def run_study(
    table: LabelledTable,
    selected: Sequence[str],
    *,
    calibration: str = "isotonic",
    n_splits: int = 5,
    seed: int = 0,
    bootstrap_resamples: int = 1000,
    progress: bool = False,
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
    """
    from tqdm.auto import tqdm

    y = table.y
    splits = make_splits(y, table.groups, n_splits=n_splits, seed=seed)
    rel = _relation_rows(table)
    feature_sets = standard_feature_sets(table)
    feature_sets["selected"] = list(selected)

    singles: dict[str, dict[str, Any]] = {}
    single_scores: dict[str, NDArray[np.float64]] = {}
    single_names = [n for n in table.features if np.ptp(table.features[n]) > 0]
    for name in single_names:
        x = table.features[name]
        pooled, direction = auroc_with_direction(y, x)
        held = _held_out_single(table, name, splits)
        single_scores[name] = held
        signed = x if direction == "higher_is_known" else -x
        within = (
            stratified_auroc(y[rel], signed[rel], table.relations[rel]).auroc
            if rel.any()
            else float("nan")
        )
        family, stage = _family_stage(name)
        singles[name] = {
            "family": family,
            "stage": stage,
            "direction": direction,
            "auroc_pooled": _nan_to_none(pooled),
            "auroc_held_out": _nan_to_none(auroc(y, held)),
            "auroc_within_relation": _nan_to_none(within),
        }
    pop_rows = np.isfinite(table.popularity)
    if pop_rows.any():
        pooled, direction = auroc_with_direction(y[pop_rows], table.popularity[pop_rows])
        both = pop_rows & rel
        singles["s_pop (metadata, PopQA rows)"] = {
            "family": "metadata",
            "stage": "none",
            "direction": direction,
            "auroc_pooled": _nan_to_none(pooled),
            "auroc_held_out": None,
            "auroc_within_relation": _nan_to_none(
                stratified_auroc(y[both], table.popularity[both], table.relations[both]).auroc
            ),
        }

    fused: dict[str, dict[str, Any]] = {}
    predictions: dict[str, CrossFitted] = {}
    for set_name, names in tqdm(feature_sets.items(), desc="fused fits", disable=not progress):
        cf = cross_fitted_p_known(
            table.matrix(names),
            y,
            names,
            calibration=calibration,
            groups=table.groups,
            n_splits=n_splits,
            seed=seed,
        )
        predictions[set_name] = cf
        fused[set_name] = {
            "n_features": len(names),
            **_fused_metrics(table, cf, n_boot=bootstrap_resamples, seed=seed),
        }
    fused["selected"]["features"] = list(selected)

    model_singles = {k: v for k, v in singles.items() if v["family"] in ("sparsity", "uncertainty")}
    prefill_singles = {k: v for k, v in model_singles.items() if v["stage"] == "prefill"}

    def best(pool: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        ranked = [(v["auroc_held_out"] or 0.0, k) for k, v in pool.items()]
        if not ranked:
            return None
        score, name = max(ranked)
        return {"feature": name, "auroc_held_out": score, "direction": pool[name]["direction"]}

    sel = predictions["selected"]
    datasets = {}
    for name in dict.fromkeys(table.datasets.tolist()):
        mask = table.datasets == name
        datasets[name] = {
            "n": int(mask.sum()),
            "closed_book_accuracy": _nan_to_none(float(y[mask].mean())),
            "echo_rejected": int(
                sum(table.records[i].score.echo_rejected for i in np.flatnonzero(mask))
            ),
        }
    by_bucket = {name: _breakdown(table, mask, sel) for name, mask in _bucket_rows(table).items()}
    by_relation = {}
    for name in sorted(set(table.relations[rel].tolist())):
        mask = table.relations == name
        by_relation[name] = {**_breakdown(table, mask, sel), **_relation_prior(table, mask)}

    best_selected = best({k: v for k, v in singles.items() if k in set(selected)})
    best_model = best(model_singles)
    summary = {
        "n_questions": int(y.size),
        "n_correct": int(y.sum()),
        "closed_book_accuracy": _nan_to_none(float(y.mean())),
        "calibration": calibration,
        "folds": len(splits),
        "seed": seed,
        "bootstrap_resamples": bootstrap_resamples,
        "datasets": datasets,
        "selected_features": list(selected),
        "best_single_feature": best_model,
        "best_single_prefill_feature": best(prefill_singles),
        "best_single_selected_feature": best_selected,
        "fused": fused,
        "single_features": dict(
            sorted(singles.items(), key=lambda kv: -(kv[1]["auroc_held_out"] or 0.0))
        ),
        "comparisons": _comparisons(table, predictions, n_boot=bootstrap_resamples, seed=seed),
        "per_popularity_bucket": by_bucket,
        "per_relation": by_relation,
        "targets": {
            "fused_auroc_above_best_selected_single": bool(
                best_selected is not None
                and (fused["selected"]["auroc"] or 0.0) > best_selected["auroc_held_out"]
            ),
            "ece_after_at_most_0.05": bool((fused["selected"]["ece_after"] or 1.0) <= 0.05),
        },
    }
    return StudyResult(summary, predictions, single_scores)
