"""Closed-book records as a labelled table, and the named feature sets policies are fitted on.

One row per question: every model signal of the closed-book pass, the question-only features
(wh-word, length, PopQA relation; the confound baseline), the label *knows* (closed-book
In-Accuracy, echo-guarded), the cross-validation group (the normalised question text, so the
questions two datasets share never straddle a split), the dataset, the PopQA relation and
popularity. Both the calibration study and the benchmark read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.branches.closed_book import ClosedBookRecord
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
        if not rec.features:
            raise DataError(
                f"record {rec.id} of {rec.dataset} has no model features: a served model's draft "
                "that ended at once (the server scored no token) gives none, so the question "
                "cannot be fitted on; drop it from the data (the router retrieves for such a "
                "query)"
            )
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


def family_stage(name: str) -> tuple[str, str]:
    """A feature's signal family and stage (question-only features: ``question``, prefill)."""
    spec = feature_specs().get(name)
    if spec is not None:
        return spec.family, spec.stage
    return ("question", "prefill") if name in QUESTION_FEATURES else ("unknown", "unknown")


def features_in(table: LabelledTable, group: str) -> list[str]:
    """Feature names of ``table`` in a named group (see :data:`FEATURE_GROUPS`)."""
    out = []
    for name in table.features:
        family, stage = family_stage(name)
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
    prefill_u = [n for n in features_in(table, "prefill") if family_stage(n)[0] == "uncertainty"]
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


PLOTTED_SETS = (
    "uncertainty (prefill)",
    "sparsity (prefill)",
    "uncertainty+sparsity (prefill)",
    "question-only",
    "question+uncertainty+sparsity (prefill)",
    "uncertainty+sparsity (prefill+draft)",
)
"""The fused sets both reports plot."""
