"""Per-arm report of a logged experiment, with intervals, significance tests and a verdict.

Per arm: requests, units, retrieval rate, accuracy (where outcomes exist), mean score, latency
p50/p95, each with a 95% interval. Each treatment arm is compared with the control (the first
arm): retrieval rate and accuracy as two independent proportions, latency by Mann-Whitney U;
p-values are Holm-adjusted across every comparison in the report. A chi-square test of the unit
counts against the weights flags a sample ratio mismatch.

Requests are treated as independent. A unit (user) that sends many requests makes its requests
correlated, which narrows the intervals; when few units send most of the traffic, read the
intervals as optimistic.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowgate.errors import ExperimentError
from knowgate.experiments.decision_log import DecisionLog, LoggedDecision
from knowgate.experiments.formatting import format_difference, interval_text, table
from knowgate.experiments.statistics import (
    Difference,
    Estimate,
    holm_adjust,
    mean_interval,
    median_shift,
    proportion,
    quantile_interval,
    two_proportions,
)
from knowgate.experiments.verdict import format_p, verdict


@dataclass(frozen=True)
class ArmSummary:
    """One arm's numbers.

    Attributes:
        arm: the arm's name.
        policy_id: its policy.
        weight: its share of units by definition.
        requests: logged requests.
        units: distinct units.
        random_units: units that came without an id (one request each).
        retrieval_rate: share of requests the gate sent to the retriever.
        labelled: requests with a correct/wrong outcome.
        accuracy: share of labelled requests answered correctly (``None`` without outcomes).
        scored: requests with a score.
        score: mean score (``None`` without scores).
        latency_p50_ms: median end-to-end latency.
        latency_p95_ms: 95th percentile latency.
        lm_calls: mean LM calls per request.
        retriever_calls: mean retriever calls per request.
    """

    arm: str
    policy_id: str
    weight: float
    requests: int
    units: int
    random_units: int
    retrieval_rate: Estimate
    labelled: int
    accuracy: Estimate | None
    scored: int
    score: Estimate | None
    latency_p50_ms: Estimate
    latency_p95_ms: Estimate
    lm_calls: float | None
    retriever_calls: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.to_dict() if isinstance(value, Estimate) else value
        return out


@dataclass(frozen=True)
class ExperimentReport:
    """The report of one experiment (see :func:`build_report`)."""

    experiment: str
    config_hash: str
    control: str
    alpha: float
    margin: float
    label_source: str | None
    arms: list[ArmSummary]
    comparisons: dict[str, list[Difference]]
    srm_p_value: float | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``knowgate ab report --json``)."""
        return {
            "experiment": self.experiment,
            "config_hash": self.config_hash,
            "control": self.control,
            "alpha": self.alpha,
            "margin": self.margin,
            "label_source": self.label_source,
            "arms": [a.to_dict() for a in self.arms],
            "comparisons": {
                arm: [d.to_dict() for d in diffs] for arm, diffs in self.comparisons.items()
            },
            "sample_ratio_mismatch_p": self.srm_p_value,
            "verdict": self.verdict,
            "notes": self.notes,
        }

    def to_text(self, width: int = 100) -> str:
        """A plain-text report (what ``knowgate ab report`` prints)."""
        return format_report(self, width=width)


def _arm_summary(
    arm: str, policy_id: str, weight: float, rows: Sequence[LoggedDecision], alpha: float
) -> ArmSummary:
    n = len(rows)
    retrieve = sum(r.retrieve for r in rows)
    labelled = [r.correct for r in rows if r.correct is not None]
    scores = [float(r.score) for r in rows if r.score is not None]
    latency = np.array([r.latency_ms for r in rows], dtype=np.float64)
    return ArmSummary(
        arm=arm,
        policy_id=policy_id,
        weight=weight,
        requests=n,
        units=len({r.unit_id for r in rows}),
        random_units=len({r.unit_id for r in rows if r.unit_id_source == "random"}),
        retrieval_rate=proportion(retrieve, n, alpha),
        labelled=len(labelled),
        accuracy=proportion(sum(labelled), len(labelled), alpha) if labelled else None,
        scored=len(scores),
        score=mean_interval(scores, alpha) if scores else None,
        latency_p50_ms=quantile_interval(latency, 0.5, alpha),
        latency_p95_ms=quantile_interval(latency, 0.95, alpha),
        lm_calls=float(np.mean([r.lm_calls for r in rows])) if rows else None,
        retriever_calls=float(np.mean([r.retriever_calls for r in rows])) if rows else None,
    )


def _sample_ratio_p(units: list[int], weights: list[float]) -> float | None:
    """Chi-square goodness of fit of unit counts to the weights (``None`` if too few units)."""
    from scipy.stats import chisquare

    total = sum(units)
    expected = [w * total for w in weights]
    if total == 0 or min(expected) < 5:
        return None
    return float(chisquare(units, expected).pvalue)


def build_report(
    log: DecisionLog,
    experiment: str,
    *,
    alpha: float = 0.05,
    margin: float = 0.02,
    label_source: str | None = None,
    seed: int = 0,
) -> ExperimentReport:
    """Summarise one experiment from its decision log.

    Args:
        log: the decision log.
        experiment: the experiment's name.
        alpha: significance level (intervals are ``1 - alpha``).
        margin: accuracy difference (absolute, e.g. 0.02 = 2 pp) within which two arms count as
            equally accurate when one is cheaper (see :mod:`knowgate.experiments.verdict`).
        label_source: use only outcomes from this source; ``None``: the latest of any source.
        seed: bootstrap seed (reports are reproducible).

    Raises:
        ExperimentError: unknown experiment, or bad alpha/margin.
    """
    if not 0 < alpha < 1:
        raise ExperimentError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < margin < 1:
        raise ExperimentError(f"margin must be in (0, 1), got {margin}")
    definition = log.definition(experiment)
    rows = log.decisions(experiment, label_source=label_source)
    arms_def = definition["arms"]
    control = arms_def[0]["arm"]
    by_arm: dict[str, list[LoggedDecision]] = {a["arm"]: [] for a in arms_def}
    notes: list[str] = []
    stray = 0
    for r in rows:
        if r.arm in by_arm:
            by_arm[r.arm].append(r)
        else:
            stray += 1
    if stray:
        notes.append(f"{stray} requests name arms outside the definition and are ignored.")
    summaries = [
        _arm_summary(a["arm"], a["policy_id"], a["weight"], by_arm[a["arm"]], alpha)
        for a in arms_def
    ]
    diffs: list[tuple[str, Difference]] = []
    c_rows = by_arm[control]
    c_lab = [r.correct for r in c_rows if r.correct is not None]
    for a in arms_def[1:]:
        arm = a["arm"]
        t_rows = by_arm[arm]
        t_lab = [r.correct for r in t_rows if r.correct is not None]
        diffs.append(
            (
                arm,
                two_proportions(
                    "retrieval_rate",
                    (sum(r.retrieve for r in c_rows), len(c_rows)),
                    (sum(r.retrieve for r in t_rows), len(t_rows)),
                    alpha=alpha,
                    lower_is_better=True,
                ),
            )
        )
        if c_lab and t_lab:
            diffs.append(
                (
                    arm,
                    two_proportions(
                        "accuracy",
                        (sum(c_lab), len(c_lab)),
                        (sum(t_lab), len(t_lab)),
                        alpha=alpha,
                    ),
                )
            )
        diffs.append(
            (
                arm,
                median_shift(
                    "latency_p50_ms",
                    [r.latency_ms for r in c_rows],
                    [r.latency_ms for r in t_rows],
                    alpha=alpha,
                    seed=seed,
                ),
            )
        )
    adjusted = holm_adjust([d for _, d in diffs])
    comparisons: dict[str, list[Difference]] = {a["arm"]: [] for a in arms_def[1:]}
    for (arm, _), d in zip(diffs, adjusted, strict=True):
        comparisons[arm].append(d)
    srm = _sample_ratio_p([s.units for s in summaries], [s.weight for s in summaries])
    if not rows:
        text = f"No traffic logged for experiment {experiment!r} yet."
    else:
        text = verdict(control, comparisons, alpha=alpha, margin=margin, srm_p_value=srm)
    return ExperimentReport(
        experiment=experiment,
        config_hash=definition["config_hash"],
        control=control,
        alpha=alpha,
        margin=margin,
        label_source=label_source,
        arms=summaries,
        comparisons=comparisons,
        srm_p_value=srm,
        verdict=text,
        notes=notes,
    )


def format_report(report: ExperimentReport, width: int = 100) -> str:
    """Plain-text rendering: arms table, comparisons table, sample-ratio check, verdict."""
    conf = f"{1 - report.alpha:.0%} CI"
    lines = [
        f"Experiment {report.experiment!r} (definition {report.config_hash}; control "
        f"{report.control!r}; outcomes: {report.label_source or 'latest of any source'})",
        "",
    ]
    lines += table(
        [
            "arm",
            "weight",
            "requests",
            "units",
            f"retrieval rate [{conf}]",
            f"accuracy [{conf}]",
            "labelled",
            "p50 ms",
            "p95 ms",
        ],
        [
            [
                a.arm,
                f"{a.weight:.0%}",
                str(a.requests),
                str(a.units),
                interval_text(a.retrieval_rate, "rate"),
                interval_text(a.accuracy, "rate"),
                str(a.labelled),
                interval_text(a.latency_p50_ms, "ms"),
                interval_text(a.latency_p95_ms, "ms"),
            ]
            for a in report.arms
        ],
    )
    lines.append("")
    scored = any(a.scored for a in report.arms)
    lines += table(
        ["arm", "policy", "LM calls", "retriever calls"]
        + (["mean score", "scored"] if scored else []),
        [
            [
                a.arm,
                a.policy_id,
                "-" if a.lm_calls is None else f"{a.lm_calls:.2f}",
                "-" if a.retriever_calls is None else f"{a.retriever_calls:.2f}",
            ]
            + ([interval_text(a.score, "number"), str(a.scored)] if scored else [])
            for a in report.arms
        ],
    )
    comp_rows = [
        [f"{arm} - {report.control}", *format_difference(d)]
        for arm, diffs in report.comparisons.items()
        for d in diffs
    ]
    if comp_rows:
        lines.append("")
        lines += table(
            ["comparison", "metric", "control", "treatment", "difference [CI]", "p", "p (Holm)"],
            comp_rows,
        )
    lines.append("")
    srm = (
        "not computed (fewer than 5 expected units per arm)"
        if report.srm_p_value is None
        else format_p(report.srm_p_value)
    )
    lines.append(f"Sample ratio check (units vs weights, chi-square): {srm}")
    lines += [f"Note: {note}" for note in report.notes]
    lines.append("")
    lines += textwrap.wrap("Verdict: " + report.verdict, width=width, break_on_hyphens=False)
    return "\n".join(lines)
