"""Reports on synthetic logs whose answers are known, and the statistics underneath them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from experiments_helpers import gate_policy, synthetic_row, two_arm_experiment
from knowgate.errors import ExperimentError
from knowgate.experiments import DecisionLog, Experiment, Outcome, build_report
from knowgate.experiments.statistics import (
    holm_adjust,
    paired_binary,
    paired_continuous,
    proportion,
    requests_to_detect,
    two_proportions,
)
from knowgate.policy import build_policy

Z = norm.ppf(0.975)


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval, written out (independent of statsmodels)."""
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def agresti_caffo(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """Agresti-Caffo interval and test for p1 - p2, written out: add one success and one
    failure to each arm, then Wald."""
    p1, p2 = (k1 + 1) / (n1 + 2), (k2 + 1) / (n2 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    d = p1 - p2
    return d - Z * se, d + Z * se, 2 * norm.sf(abs(d) / se)


def fill(log, exp, arm, n, *, retrieve, correct, latency, units=None, start=0, labels=True):
    """Log ``n`` requests in ``arm``: the first ``retrieve`` retrieve, the first ``correct`` are
    right; ``latency(i)`` gives each latency; ``units`` distinct unit ids (default: one each)."""
    units = units or n
    rows = [
        synthetic_row(
            exp,
            f"{arm}-{start + i}",
            f"{arm}-unit-{i % units}",
            arm=arm,
            retrieve=i < retrieve,
            latency_ms=latency(i),
        )
        for i in range(n)
    ]
    log.record_rows(rows)
    if labels:
        log.record_outcomes(
            [
                Outcome(r.request_id, correct=i < correct, label_source="gold")
                for i, r in enumerate(rows)
            ]
        )


@pytest.fixture
def log(tmp_path):
    with DecisionLog(tmp_path / "log.sqlite") as db:
        yield db


def by_metric(report, arm="gate"):
    return {d.metric: d for d in report.comparisons[arm]}


def test_known_counts_give_known_rates_intervals_and_a_winner(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 400, retrieve=400, correct=240, latency=lambda i: 200 + i % 100)
    fill(log, exp, "gate", 400, retrieve=120, correct=300, latency=lambda i: 150 + i % 100)
    report = build_report(log, exp.name)
    control, gate = report.arms
    assert (control.requests, gate.requests, control.units, gate.units) == (400, 400, 400, 400)
    assert control.retrieval_rate.value == 1.0 and gate.retrieval_rate.value == 0.3
    assert control.accuracy.value == 0.6 and gate.accuracy.value == 0.75
    assert (control.labelled, gate.labelled) == (400, 400)
    assert (gate.accuracy.low, gate.accuracy.high) == pytest.approx(wilson(300, 400), abs=1e-9)
    assert (control.accuracy.low, control.accuracy.high) == pytest.approx(wilson(240, 400))
    assert gate.lm_calls == pytest.approx(1.3) and gate.retriever_calls == pytest.approx(0.3)
    lat = np.array([150 + i % 100 for i in range(400)], dtype=float)
    assert gate.latency_p50_ms.value == pytest.approx(np.quantile(lat, 0.5))
    assert gate.latency_p95_ms.value == pytest.approx(np.quantile(lat, 0.95))
    # Order-statistic interval of the median: binomial(400, 0.5) bounds, by hand.
    from scipy.stats import binom

    k = int(binom.ppf(0.025, 400, 0.5))
    srt = np.sort(lat)
    assert gate.latency_p50_ms.low == pytest.approx(srt[k - 1], abs=1)
    assert gate.latency_p50_ms.high == pytest.approx(srt[400 - k], abs=1)

    m = by_metric(report)
    acc = m["accuracy"]
    assert acc.diff == pytest.approx(0.15)
    low, high, p = agresti_caffo(300, 400, 240, 400)
    assert (acc.low, acc.high, acc.p_value) == pytest.approx((low, high, p), abs=1e-12)
    assert acc.p_value < 1e-4 and acc.p_adjusted >= acc.p_value
    assert m["retrieval_rate"].diff == pytest.approx(-0.7) and m["retrieval_rate"].p_value < 1e-6
    assert m["latency_p50_ms"].diff == pytest.approx(-50.0)
    assert m["latency_p50_ms"].p_value < 1e-6
    assert report.verdict.startswith("gate wins on accuracy over control: 75.0% vs 60.0%")
    assert "gate retrieves 70.0 pp less often than control" in report.verdict
    text = report.to_text()
    assert "75.0% [" in text and "Verdict: gate wins on accuracy" in text
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["arms"][1]["accuracy"]["value"] == 0.75
    assert data["comparisons"]["gate"][0]["metric"] == "retrieval_rate"


def test_worse_treatment_makes_the_control_the_winner(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 300, retrieve=300, correct=240, latency=lambda i: 100.0)
    fill(log, exp, "gate", 300, retrieve=30, correct=120, latency=lambda i: 100.0)
    report = build_report(log, exp.name)
    assert report.verdict.startswith("control wins on accuracy over gate: 80.0% vs 40.0%")
    # Identical latencies: no shift, p = 1.
    assert by_metric(report)["latency_p50_ms"].p_value == 1.0


def test_cheaper_arm_wins_on_cost_when_accuracy_is_within_the_margin(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    n = 12_000
    fill(log, exp, "control", n, retrieve=n, correct=n // 2, latency=lambda i: 100.0)
    fill(log, exp, "gate", n, retrieve=n * 2 // 5, correct=n // 2, latency=lambda i: 100.0)
    report = build_report(log, exp.name, margin=0.02)
    acc = by_metric(report)["accuracy"]
    assert acc.diff == 0 and acc.low > -0.02 and acc.high < 0.02
    assert report.verdict.startswith("gate wins on cost: gate retrieves 60.0 pp less often")
    assert "within ±2 pp of control" in report.verdict
    # With a margin narrower than the interval, the same data cannot tell.
    narrow = build_report(log, exp.name, margin=0.005)
    assert narrow.verdict.startswith("The data cannot tell yet")


def test_same_costs_and_accuracy_within_margin_are_equivalent(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    n = 12_000
    fill(log, exp, "control", n, retrieve=n // 2, correct=n // 2, latency=lambda i: 100.0)
    fill(log, exp, "gate", n, retrieve=n // 2, correct=n // 2, latency=lambda i: 100.0)
    report = build_report(log, exp.name)
    assert report.verdict.startswith("gate and control are equivalent")


def test_small_samples_cannot_tell_and_say_how_many_are_needed(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 30, retrieve=30, correct=15, latency=lambda i: 100.0 + i)
    fill(log, exp, "gate", 30, retrieve=15, correct=18, latency=lambda i: 100.0 + i)
    report = build_report(log, exp.name)
    assert report.verdict.startswith("The data cannot tell yet whether gate or control")
    # Per-arm sample size for 50% -> 52% at alpha 0.05, power 0.8: each arm's arcsine-
    # transformed rate has variance 1/n, so n = 2 ((z_0.975 + z_0.8) / h)^2 (Cohen's h).
    h = abs(2 * math.asin(math.sqrt(0.52)) - 2 * math.asin(math.sqrt(0.5)))
    need = math.ceil(2 * ((norm.ppf(0.975) + norm.ppf(0.8)) / h) ** 2)
    assert requests_to_detect(0.5, 0.02) == need
    assert f"about {need:,} requests per arm" in report.verdict
    # Retrieval does differ significantly even at this size (100% vs 50%).
    assert "gate retrieves 50.0 pp less often" in report.verdict


def test_without_outcomes_no_arm_is_declared_the_winner(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 50, retrieve=50, correct=0, latency=lambda i: 100.0, labels=False)
    fill(log, exp, "gate", 50, retrieve=10, correct=0, latency=lambda i: 100.0, labels=False)
    report = build_report(log, exp.name)
    assert report.arms[0].accuracy is None and report.arms[0].labelled == 0
    assert "accuracy" not in by_metric(report)
    assert report.verdict.startswith("gate vs control: no outcomes recorded")
    assert "Record outcomes" in report.verdict and "wins" not in report.verdict


def test_sample_ratio_mismatch_is_flagged(log) -> None:
    exp = two_arm_experiment()  # 50/50 by definition
    log.register(exp)
    fill(log, exp, "control", 700, retrieve=700, correct=350, latency=lambda i: 100.0)
    fill(log, exp, "gate", 300, retrieve=100, correct=150, latency=lambda i: 100.0)
    report = build_report(log, exp.name)
    assert report.srm_p_value is not None and report.srm_p_value < 1e-30
    assert report.verdict.startswith("Warning: sample ratio mismatch")
    # Units, not requests, are what the split assigns: many requests per unit are fine.
    with DecisionLog(log.path.parent / "units.sqlite") as other:
        other.register(exp)
        fill(
            other, exp, "control", 700, retrieve=700, correct=350, latency=lambda i: 1.0, units=100
        )
        fill(other, exp, "gate", 300, retrieve=100, correct=150, latency=lambda i: 1.0, units=100)
        balanced = build_report(other, exp.name)
    assert balanced.srm_p_value == pytest.approx(1.0)
    assert not balanced.verdict.startswith("Warning")


def test_label_source_selects_outcomes_and_unknown_experiments_fail(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 10, retrieve=10, correct=10, latency=lambda i: 1.0)
    fill(log, exp, "gate", 10, retrieve=0, correct=10, latency=lambda i: 1.0)
    log.record_outcomes(
        [Outcome(f"gate-{i}", correct=False, label_source="user") for i in range(10)]
    )
    assert build_report(log, exp.name).arms[1].accuracy.value == 0.0  # latest wins
    assert build_report(log, exp.name, label_source="gold").arms[1].accuracy.value == 1.0
    with pytest.raises(ExperimentError, match="no experiment 'nope'"):
        build_report(log, "nope")
    with pytest.raises(ExperimentError, match="alpha"):
        build_report(log, exp.name, alpha=1.5)


def test_empty_experiment_reports_no_traffic(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    report = build_report(log, exp.name)
    assert report.verdict == "No traffic logged for experiment 'gate-vs-rag' yet."
    assert report.arms[0].requests == 0 and report.arms[0].retrieval_rate.value is None
    assert "Verdict: No traffic" in report.to_text()


# ----------------------------------------------------------------------------- statistics
def test_wilson_and_agresti_caffo_match_their_formulas() -> None:
    e = proportion(7, 20)
    assert (e.low, e.high) == pytest.approx(wilson(7, 20))
    d = two_proportions("accuracy", (12, 40), (25, 50))
    assert d.diff == pytest.approx(0.5 - 0.3)
    assert (d.low, d.high, d.p_value) == pytest.approx(agresti_caffo(25, 50, 12, 40))
    # The interval excludes 0 exactly when the test rejects (the report never contradicts
    # itself), including the borderline case of the README example (20/174 vs 25/126).
    for k1, n1, k2, n2 in [(20, 174, 25, 126), (0, 40, 5, 40), (40, 40, 33, 40), (9, 30, 17, 30)]:
        d = two_proportions("accuracy", (k2, n2), (k1, n1))
        assert (d.p_value < 0.05) == (d.low > 0 or d.high < 0)
    both_zero = two_proportions("accuracy", (0, 40), (0, 50))
    assert both_zero.diff == 0 and both_zero.p_value > 0.5  # Agresti-Caffo adds pseudo-counts


def test_mcnemar_matches_the_exact_binomial_by_hand() -> None:
    # 10 questions only the treatment gets right, 2 only the control: b + c = 12 < 25 -> exact.
    control = [False] * 10 + [True] * 2 + [True] * 30 + [False] * 8
    treatment = [True] * 10 + [False] * 2 + [True] * 30 + [False] * 8
    d = paired_binary("accuracy", control, treatment)
    exact = 2 * sum(math.comb(12, k) for k in range(3)) / 2**12
    assert d.p_value == pytest.approx(exact)
    assert d.diff == pytest.approx(8 / 50)
    assert d.low <= d.diff <= d.high
    same = paired_binary("accuracy", control, control)
    assert same.p_value == 1.0 and same.low == same.high == 0.0


def test_paired_continuous_and_holm() -> None:
    a = np.linspace(1, 2, 40)
    d = paired_continuous("wall_time_s", a, a + 0.5, lower_is_better=True)
    assert d.diff == pytest.approx(0.5) and d.p_value < 1e-6
    assert d.low == pytest.approx(0.5) and d.high == pytest.approx(0.5)
    assert paired_continuous("wall_time_s", a, a).p_value == 1.0
    diffs = [
        two_proportions("x", (1, 2), (1, 2)).__class__("m", 0, 0, 0, None, None, p, "t")
        for p in (0.01, 0.04, 0.03)
    ]
    adjusted = [d.p_adjusted for d in holm_adjust(diffs)]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])


def test_three_arms_are_each_compared_with_the_control(log) -> None:
    exp = Experiment(
        "abc", {"rag": build_policy("always"), "g4": gate_policy(0.4), "g6": gate_policy(0.6)}
    )
    log.register(exp)
    fill(log, exp, "rag", 200, retrieve=200, correct=120, latency=lambda i: 100.0 + i % 9)
    fill(log, exp, "g4", 200, retrieve=100, correct=118, latency=lambda i: 80.0 + i % 9)
    fill(log, exp, "g6", 200, retrieve=150, correct=60, latency=lambda i: 90.0 + i % 9)
    report = build_report(log, "abc")
    assert list(report.comparisons) == ["g4", "g6"]
    diffs = [d for ds in report.comparisons.values() for d in ds]
    assert len(diffs) == 6 and all(d.p_adjusted >= d.p_value for d in diffs)
    g6 = {d.metric: d for d in report.comparisons["g6"]}
    assert g6["accuracy"].diff == pytest.approx(-0.3)
    sentences = report.verdict.split(". ")
    assert any(s.startswith("rag wins on accuracy over g6") for s in sentences)
    assert "g4 retrieves 50.0 pp less often than rag" in report.verdict
    assert "g4 - rag" in report.to_text() and "g6 - rag" in report.to_text()
