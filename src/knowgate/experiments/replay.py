"""Offline replay: judge candidate policies on cached both-branch results before any traffic.

The benchmark answers every question twice - closed-book and with retrieval - and caches both
results with the gate's features. A policy's outcome on a question is then known exactly
without running the model: the retrieval branch's result when it retrieves, the closed-book
one when it does not. Two policies are compared *paired*, on the same questions, which is
far more sensitive than an A/B test of the same size. The question is the unit: Agresti and
Min's adjusted Wald interval and test for correctness and for the retrieve decision, the paired
t-test and interval for wall time and score - each interval from the same procedure as its test.

The cache is the benchmark's both-branch file (``both_branches.jsonl``; schema, reader and the
outcome rule in :mod:`knowgate.evaluation.both_branches`): per question both results, the
per-stage wall times and every feature a gate could read. A replayed policy's outcome is the
one the benchmark computes: the retrieval answer where it retrieves, else the closed-book
answer, with the LM calls and latency of the request's path through the router (a policy that
reads no signal - always, never - is served without a gate prefill).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowgate.errors import ExperimentError, PolicyError
from knowgate.evaluation.both_branches import (
    CACHE_FILE,
    BothBranchRecord,
    BranchOutcomes,
    cache_path,
    policy_outcome,
    read_both_branches,
    stage_of,
)
from knowgate.experiments.formatting import format_difference, interval_text, table
from knowgate.experiments.statistics import (
    Difference,
    Estimate,
    holm_adjust,
    mean_interval,
    paired_binary,
    paired_continuous,
    proportion,
)
from knowgate.experiments.verdict import verdict
from knowgate.policy import Policy

__all__ = [
    "CACHE_FILE",
    "BothBranchRecord",
    "PolicyOutcome",
    "ReplayReport",
    "cache_path",
    "format_replay",
    "read_both_branches",
    "replay",
]


@dataclass(frozen=True)
class PolicyOutcome:
    """What one policy would have done on the cached questions.

    Attributes:
        label: the policy's name in this replay.
        policy_id: its id.
        questions: questions replayed.
        accuracy: share answered correctly.
        retrieval_rate: share sent to the retriever.
        wall_time_s: mean wall time per question.
        total_time_s: summed wall time.
        lm_calls: mean LM calls per question, as the router counts them (one prompt through
            the local model; see :func:`knowgate.evaluation.both_branches.policy_outcome`).
        score: mean score, when every row has both scores.
    """

    label: str
    policy_id: str
    questions: int
    accuracy: Estimate
    retrieval_rate: Estimate
    wall_time_s: Estimate
    total_time_s: float
    lm_calls: float
    score: Estimate | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            k: (v.to_dict() if isinstance(v, Estimate) else v) for k, v in self.__dict__.items()
        }


@dataclass(frozen=True)
class ReplayReport:
    """Paired comparison of policies on one both-branch cache (see :func:`replay`)."""

    cache: str
    questions: int
    model_id: str | None
    control: str
    alpha: float
    margin: float
    policies: list[PolicyOutcome]
    references: dict[str, dict[str, float]]
    comparisons: dict[str, list[Difference]]
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``knowgate ab replay --json``)."""
        return {
            "cache": self.cache,
            "questions": self.questions,
            "model_id": self.model_id,
            "control": self.control,
            "alpha": self.alpha,
            "margin": self.margin,
            "policies": [p.to_dict() for p in self.policies],
            "references": self.references,
            "comparisons": {k: [d.to_dict() for d in v] for k, v in self.comparisons.items()},
            "verdict": self.verdict,
            "notes": self.notes,
        }

    def to_text(self, width: int = 100) -> str:
        """Plain-text rendering."""
        return format_replay(self, width=width)


@dataclass(frozen=True)
class _Replayed:
    correct: np.ndarray
    retrieve: np.ndarray
    seconds: np.ndarray
    lm_calls: np.ndarray
    score: np.ndarray | None


def _run_policy(
    label: str,
    policy: Policy,
    records: Sequence[BothBranchRecord],
    branches: BranchOutcomes,
    features: list[dict[str, float]],
    *,
    force: bool,
) -> _Replayed:
    model = records[0].model_id
    mismatch = policy.model_id is not None and model is not None and policy.model_id != model
    if mismatch and not force:
        raise PolicyError(
            f"policy {label} ({policy.policy_id}) was fitted for model {policy.model_id!r}, "
            f"but the cache holds {model!r} features; its decisions would be meaningless "
            "(force=True / --force-policy to replay anyway)"
        )
    try:
        decisions = policy.decide_batch(features)
    except PolicyError as exc:
        raise PolicyError(f"policy {label} cannot be replayed on this cache: {exc}") from exc
    retrieve = np.array([d.retrieve for d in decisions], dtype=bool)
    outcome = policy_outcome(branches, retrieve, stage=stage_of(policy.required_features))
    scored = bool(
        np.isfinite(branches.closed_book_score).all()
        and np.isfinite(branches.retrieval_score).all()
    )
    return _Replayed(
        correct=outcome.correct.astype(bool),
        retrieve=retrieve,
        seconds=outcome.seconds,
        lm_calls=outcome.lm_calls,
        score=outcome.score if scored else None,
    )


def replay(
    records: Sequence[BothBranchRecord],
    policies: Mapping[str, Policy],
    *,
    alpha: float = 0.05,
    margin: float = 0.02,
    force: bool = False,
    cache: str = "",
) -> ReplayReport:
    """Replay policies on cached both-branch results and compare each with the first.

    Args:
        records: the cache (:func:`read_both_branches`).
        policies: label -> policy, at least one; the first is the control.
        alpha: significance level.
        margin: accuracy margin within which a cheaper policy wins (see
            :mod:`knowgate.experiments.verdict`).
        force: replay policies fitted for another model than the cache's.
        cache: where the records came from (for the report).

    Raises:
        ExperimentError: no records or policies, bad alpha/margin.
        PolicyError: a policy needs a feature the cache lacks, or was fitted for another model.
    """
    if not records:
        raise ExperimentError("nothing to replay: the cache has no rows")
    if not policies:
        raise ExperimentError("give at least one policy to replay")
    if not 0 < alpha < 1 or not 0 < margin < 1:
        raise ExperimentError(f"alpha and margin must be in (0, 1), got {alpha}, {margin}")
    features = [r.gate_features() for r in records]
    branches = BranchOutcomes.from_records(records)
    replayed = {
        label: _run_policy(label, p, records, branches, features, force=force)
        for label, p in policies.items()
    }
    outcomes = [
        PolicyOutcome(
            label=label,
            policy_id=policies[label].policy_id,
            questions=len(records),
            accuracy=proportion(int(r.correct.sum()), len(records), alpha),
            retrieval_rate=proportion(int(r.retrieve.sum()), len(records), alpha),
            wall_time_s=mean_interval(r.seconds, alpha),
            total_time_s=float(r.seconds.sum()),
            lm_calls=float(r.lm_calls.mean()),
            score=mean_interval(r.score, alpha) if r.score is not None else None,
        )
        for label, r in replayed.items()
    ]
    labels = list(policies)
    control = labels[0]
    base = replayed[control]
    raw: list[tuple[str, Difference]] = []
    for label in labels[1:]:
        r = replayed[label]
        raw.append((label, paired_binary("accuracy", base.correct, r.correct, alpha=alpha)))
        raw.append(
            (
                label,
                paired_binary(
                    "retrieval_rate",
                    base.retrieve,
                    r.retrieve,
                    alpha=alpha,
                    lower_is_better=True,
                ),
            )
        )
        raw.append(
            (
                label,
                paired_continuous(
                    "wall_time_s",
                    base.seconds,
                    r.seconds,
                    alpha=alpha,
                    lower_is_better=True,
                ),
            )
        )
        if base.score is not None and r.score is not None:
            raw.append((label, paired_continuous("score", base.score, r.score, alpha=alpha)))
    adjusted = holm_adjust([d for _, d in raw])
    comparisons: dict[str, list[Difference]] = {label: [] for label in labels[1:]}
    for (label, _), d in zip(raw, adjusted, strict=True):
        comparisons[label].append(d)
    cb = np.array([r.closed_book_correct for r in records], dtype=bool)
    rag = np.array([r.retrieval_correct for r in records], dtype=bool)
    references = {
        "never": {"accuracy": float(cb.mean()), "retrieval_rate": 0.0},
        "always": {"accuracy": float(rag.mean()), "retrieval_rate": 1.0},
        "oracle": {"accuracy": float((cb | rag).mean()), "retrieval_rate": float((~cb).mean())},
    }
    notes = []
    if len(labels) == 1:
        text = f"Only one policy ({control}) was given; nothing to compare."
    else:
        text = verdict(control, comparisons, alpha=alpha, margin=margin)
        notes.append(
            f"Paired on the same questions (the question is the unit); each interval "
            f"({1 - alpha:.0%}, unadjusted) comes from the same procedure as its p-value, and "
            "p (Holm) adjusts across all comparisons and decides the verdict. LM calls per "
            "question as the router counts them: one per prompt through the local model."
        )
    return ReplayReport(
        cache=cache,
        questions=len(records),
        model_id=records[0].model_id,
        control=control,
        alpha=alpha,
        margin=margin,
        policies=outcomes,
        references=references,
        comparisons=comparisons,
        verdict=text,
        notes=notes,
    )


def format_replay(report: ReplayReport, width: int = 100) -> str:
    """Plain-text rendering: per-policy table, references, paired comparisons, verdict."""
    conf = f"{1 - report.alpha:.0%} CI"
    model = f", model {report.model_id}" if report.model_id else ""
    lines = [f"Offline replay of {report.questions} questions ({report.cache}{model})", ""]
    scored = any(p.score is not None for p in report.policies)
    lines += table(
        [
            "policy",
            f"accuracy [{conf}]",
            f"retrieval rate [{conf}]",
            "ms/question",
            "total s",
            "LM calls/q",
            *(["mean score"] if scored else []),
            "policy id",
        ],
        [
            [
                p.label,
                interval_text(p.accuracy, "rate"),
                interval_text(p.retrieval_rate, "rate"),
                interval_text(p.wall_time_s, "s"),
                f"{p.total_time_s:.1f}",
                f"{p.lm_calls:.2f}",
                *([interval_text(p.score, "number")] if scored else []),
                p.policy_id,
            ]
            for p in report.policies
        ],
    )
    refs = ", ".join(
        f"{name} {r['accuracy']:.1%} at {r['retrieval_rate']:.0%} retrieval"
        for name, r in report.references.items()
    )
    lines += ["", f"References on this cache: {refs}."]
    rows = [
        [f"{label} - {report.control}", *format_difference(d, design_effect=False)]
        for label, diffs in report.comparisons.items()
        for d in diffs
    ]
    if rows:
        lines.append("")
        lines += table(
            ["comparison", "metric", "control", "treatment", "difference [CI]", "p", "p (Holm)"],
            rows,
        )
    lines += [f"Note: {n}" for n in report.notes]
    lines.append("")
    lines += textwrap.wrap("Verdict: " + report.verdict, width=width, break_on_hyphens=False)
    return "\n".join(lines)
