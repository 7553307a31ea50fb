"""Per-arm report of a logged experiment, analysed at the unit, with tests and a verdict.

Units (users, sessions) are what the experiment randomises, so every interval and test treats
the unit as the independent observation (see :mod:`knowgate.experiments.statistics`): per arm,
retrieval rate, accuracy (where outcomes exist), mean score and mean latency are ratios of unit
sums with delta-method intervals; latency p50/p95 get cluster-bootstrap intervals. Each
treatment arm is compared with the control (the first arm) on retrieval rate, accuracy, mean
latency and median latency; each comparison's interval and p-value come from one procedure,
and p-values are Holm-adjusted across every comparison in the report. A chi-square test of the
unit counts against the weights flags a sample ratio mismatch.

Latency is what the router records per request, ``timings_ms["total"]``: the sum of the
request's timed stages (policy, prefill, signals, decode, retrieve, answer). LM calls are the
router's ``calls["lm"]``: prompts through the local model, a prefill and its decode counted once.
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
    ClusterQuantiles,
    Difference,
    Estimate,
    UnitTotals,
    cluster_quantiles,
    holm_adjust,
    quantile_difference,
    ratio_difference,
    ratio_estimate,
)
from knowgate.experiments.verdict import format_p, verdict

METHOD = (
    "the unit (user, session) is the independent observation. Rates and means are ratios of "
    "unit sums with delta-method intervals, Welch t for differences (Agresti-Caffo "
    "pseudo-counts for proportions); latency percentiles use a cluster bootstrap over units. "
    "deff = variance / variance if requests were independent (intervals never use less than "
    "the latter). Latency = the router's "
    "timings_ms['total'] per request (its timed stages; excludes the decision-log write). "
    "LM calls = prompts through the local model (prefill and its decode count once)."
)


@dataclass(frozen=True)
class ArmSummary:
    """One arm's numbers; every interval is unit-aware.

    Attributes:
        arm: the arm's name.
        policy_id: its policy.
        weight: its share of units by definition.
        requests: logged requests.
        units: distinct units.
        random_units: units that came without an id (one request each).
        requests_per_unit: mean requests per unit.
        retrieval_rate: share of requests the gate sent to the retriever.
        labelled: requests with a correct/wrong outcome.
        accuracy: share of labelled requests answered correctly (``None`` without outcomes).
        scored: requests with a score.
        score: mean score per scored request (``None`` without scores).
        latency_mean_ms: mean per-request latency (``timings_ms["total"]``).
        latency_p50_ms: median per-request latency.
        latency_p95_ms: 95th percentile per-request latency.
        lm_calls: mean LM calls per request (the router's ``calls["lm"]``).
        retriever_calls: mean retriever calls per request.
    """

    arm: str
    policy_id: str
    weight: float
    requests: int
    units: int
    random_units: int
    requests_per_unit: float | None
    retrieval_rate: Estimate
    labelled: int
    accuracy: Estimate | None
    scored: int
    score: Estimate | None
    latency_mean_ms: Estimate
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


@dataclass(frozen=True)
class _ArmData:
    """One arm's requests summed per unit: what its summary and comparisons need."""

    retrieve: UnitTotals
    correct: UnitTotals
    score: UnitTotals
    latency: UnitTotals
    latency_quantiles: ClusterQuantiles

    @classmethod
    def of(cls, rows: Sequence[LoggedDecision], seed: int, index: int) -> _ArmData:
        units = [r.unit_id for r in rows]
        labelled = [r for r in rows if r.correct is not None]
        scored = [(r.unit_id, r.score) for r in rows if r.score is not None]
        latency = [r.latency_ms for r in rows]
        return cls(
            retrieve=UnitTotals.from_requests(units, [float(r.retrieve) for r in rows]),
            correct=UnitTotals.from_requests(
                [r.unit_id for r in labelled], [float(bool(r.correct)) for r in labelled]
            ),
            score=UnitTotals.from_requests([u for u, _ in scored], [v for _, v in scored]),
            latency=UnitTotals.from_requests(units, latency),
            # Each arm resamples its units from its own stream: arms are independent samples.
            latency_quantiles=cluster_quantiles(latency, units, (0.5, 0.95), seed=[seed, index]),
        )


def _arm_summary(
    arm: str,
    policy_id: str,
    weight: float,
    rows: Sequence[LoggedDecision],
    data: _ArmData,
    alpha: float,
) -> ArmSummary:
    n = len(rows)
    units = len({r.unit_id for r in rows})
    return ArmSummary(
        arm=arm,
        policy_id=policy_id,
        weight=weight,
        requests=n,
        units=units,
        random_units=len({r.unit_id for r in rows if r.unit_id_source == "random"}),
        requests_per_unit=n / units if units else None,
        retrieval_rate=ratio_estimate(data.retrieve, alpha, binary=True),
        labelled=data.correct.requests,
        accuracy=ratio_estimate(data.correct, alpha, binary=True)
        if data.correct.requests
        else None,
        scored=data.score.requests,
        score=ratio_estimate(data.score, alpha) if data.score.requests else None,
        latency_mean_ms=ratio_estimate(data.latency, alpha),
        latency_p50_ms=data.latency_quantiles.estimate(0.5, alpha),
        latency_p95_ms=data.latency_quantiles.estimate(0.95, alpha),
        lm_calls=float(np.mean([r.lm_calls for r in rows])) if rows else None,
        retriever_calls=float(np.mean([r.retriever_calls for r in rows])) if rows else None,
    )


def _compare(control: _ArmData, treatment: _ArmData, alpha: float) -> list[Difference]:
    """Treatment minus control on retrieval rate, accuracy (with outcomes) and latency."""
    diffs = [
        ratio_difference(
            "retrieval_rate",
            control.retrieve,
            treatment.retrieve,
            alpha=alpha,
            binary=True,
            lower_is_better=True,
        )
    ]
    if control.correct.requests and treatment.correct.requests:
        diffs.append(
            ratio_difference(
                "accuracy", control.correct, treatment.correct, alpha=alpha, binary=True
            )
        )
    diffs.append(
        ratio_difference(
            "latency_mean_ms", control.latency, treatment.latency, alpha=alpha, lower_is_better=True
        )
    )
    diffs.append(
        quantile_difference(
            "latency_p50_ms",
            control.latency_quantiles,
            treatment.latency_quantiles,
            0.5,
            alpha=alpha,
        )
    )
    return diffs


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
    arm_of_unit: dict[str, set[str]] = {}
    for r in rows:
        if r.arm in by_arm:
            arm_of_unit.setdefault(r.unit_id, set()).add(r.arm)
    shared = sum(len(arms) > 1 for arms in arm_of_unit.values())
    if shared:
        notes.append(
            f"{shared} units appear in more than one arm (assignment should be sticky): the "
            "arms are not independent samples of units, so the comparisons are unreliable."
        )
    data = {a["arm"]: _ArmData.of(by_arm[a["arm"]], seed, i) for i, a in enumerate(arms_def)}
    summaries = [
        _arm_summary(a["arm"], a["policy_id"], a["weight"], by_arm[a["arm"]], data[a["arm"]], alpha)
        for a in arms_def
    ]
    diffs = [
        (a["arm"], d) for a in arms_def[1:] for d in _compare(data[control], data[a["arm"]], alpha)
    ]
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
    """Plain-text rendering: arms, costs, comparisons, sample-ratio check, method, verdict."""
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
            "units",
            "requests",
            "req/unit",
            f"retrieval rate [{conf}]",
            f"accuracy [{conf}]",
            "labelled",
        ],
        [
            [
                a.arm,
                f"{a.weight:.0%}",
                str(a.units),
                str(a.requests),
                "-" if a.requests_per_unit is None else f"{a.requests_per_unit:.1f}",
                interval_text(a.retrieval_rate, "rate"),
                interval_text(a.accuracy, "rate"),
                str(a.labelled),
            ]
            for a in report.arms
        ],
    )
    lines.append("")
    scored = any(a.scored for a in report.arms)
    lines += table(
        ["arm", "latency mean ms", "p50 ms", "p95 ms", "LM calls/req", "retriever calls/req"]
        + ([f"mean score [{conf}]", "scored"] if scored else [])
        + ["policy"],
        [
            [
                a.arm,
                interval_text(a.latency_mean_ms, "ms"),
                interval_text(a.latency_p50_ms, "ms"),
                interval_text(a.latency_p95_ms, "ms"),
                "-" if a.lm_calls is None else f"{a.lm_calls:.2f}",
                "-" if a.retriever_calls is None else f"{a.retriever_calls:.2f}",
            ]
            + ([interval_text(a.score, "number"), str(a.scored)] if scored else [])
            + [a.policy_id]
            for a in report.arms
        ],
    )
    comp_rows = [
        [f"{arm} - {report.control}", *format_difference(d)]
        for arm, diffs in report.comparisons.items()
        for d in diffs
    ]
    if comp_rows:
        tested = sum(d.p_value is not None for diffs in report.comparisons.values() for d in diffs)
        lines.append("")
        lines += table(
            [
                "comparison",
                "metric",
                "control",
                "treatment",
                f"difference [{conf}]",
                "deff",
                "p",
                "p (Holm)",
            ],
            comp_rows,
        )
        lines += textwrap.wrap(
            f"Intervals and p are per comparison (unadjusted) and agree with each other; "
            f"p (Holm) adjusts for the {tested} comparisons and decides the verdict.",
            width=width,
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
    lines += textwrap.wrap("Method: " + METHOD, width=width, break_on_hyphens=False)
    lines.append("")
    lines += textwrap.wrap("Verdict: " + report.verdict, width=width, break_on_hyphens=False)
    return "\n".join(lines)
