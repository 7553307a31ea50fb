"""Reports on synthetic logs whose answers are known, and the statistics underneath them."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as t_dist

from experiments_helpers import gate_policy, synthetic_row, two_arm_experiment
from knowgate.errors import ExperimentError
from knowgate.experiments import DecisionLog, Experiment, Outcome, build_report
from knowgate.policy import build_policy

Z = norm.ppf(0.975)


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson score interval for a share ``p`` of ``n`` observations, written out."""
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def unit_agresti_caffo(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float, float]:
    """p1 - p2 with one request per unit, by hand: one success and one failure added to each
    arm; the delta-method variance of an arm of n + 2 one-request units is p(1-p)/(n+1); Welch
    t with n + 1 degrees of freedom per arm. Returns (low, high, p-value, se)."""
    p1, p2 = (k1 + 1) / (n1 + 2), (k2 + 1) / (n2 + 2)
    v1, v2 = p1 * (1 - p1) / (n1 + 1), p2 * (1 - p2) / (n2 + 1)
    se = math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (n1 + 1) + v2**2 / (n2 + 1))
    d = p1 - p2
    half = t_dist.ppf(0.975, df) * se
    return d - half, d + half, 2 * t_dist.sf(abs(d) / se, df), se


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
    assert gate.requests_per_unit == 1.0
    assert control.retrieval_rate.value == 1.0 and gate.retrieval_rate.value == 0.3
    assert control.accuracy.value == 0.6 and gate.accuracy.value == 0.75
    assert (control.labelled, gate.labelled) == (400, 400)
    # One request per unit: the delta-method variance is p(1-p)/(n-1), so the Wilson interval
    # is taken at an effective sample size of n - 1.
    assert (gate.accuracy.low, gate.accuracy.high) == pytest.approx(wilson(0.75, 399), abs=1e-9)
    assert (control.accuracy.low, control.accuracy.high) == pytest.approx(wilson(0.6, 399))
    assert gate.lm_calls == pytest.approx(1.3) and gate.retriever_calls == pytest.approx(0.3)
    lat = np.array([150 + i % 100 for i in range(400)], dtype=float)
    # Mean latency with one request per unit: the classical t interval.
    half = t_dist.ppf(0.975, 399) * lat.std(ddof=1) / math.sqrt(400)
    assert (gate.latency_mean_ms.low, gate.latency_mean_ms.high) == pytest.approx(
        (lat.mean() - half, lat.mean() + half)
    )
    assert gate.latency_p50_ms.value == pytest.approx(np.quantile(lat, 0.5))
    assert gate.latency_p95_ms.value == pytest.approx(np.quantile(lat, 0.95))
    assert gate.latency_p50_ms.low < gate.latency_p50_ms.value < gate.latency_p50_ms.high
    assert lat.min() <= gate.latency_p95_ms.low and gate.latency_p95_ms.high <= lat.max()

    m = by_metric(report)
    acc = m["accuracy"]
    assert acc.diff == pytest.approx(0.15)
    low, high, p, se = unit_agresti_caffo(300, 400, 240, 400)
    assert (acc.low, acc.high, acc.p_value, acc.se) == pytest.approx((low, high, p, se), rel=1e-9)
    assert acc.design_effect == pytest.approx(1.0)  # one request per unit
    assert acc.p_value < 1e-4 and acc.p_adjusted >= acc.p_value
    assert m["retrieval_rate"].diff == pytest.approx(-0.7) and m["retrieval_rate"].p_value < 1e-6
    assert m["latency_mean_ms"].diff == pytest.approx(-50.0)
    assert m["latency_p50_ms"].diff == pytest.approx(-50.0)
    assert m["latency_p50_ms"].p_value < 1e-6
    assert report.verdict.startswith("gate wins on accuracy over control: 75.0% vs 60.0%")
    assert "gate retrieves 70.0 pp less often than control" in report.verdict
    text = report.to_text()
    assert "75.0% [" in text and "Verdict: gate wins on accuracy" in text
    assert "deff" in text and "req/unit" in text
    assert "p (Holm) adjusts for the 4 comparisons" in " ".join(text.split())
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["arms"][1]["accuracy"]["value"] == 0.75
    assert data["comparisons"]["gate"][0]["metric"] == "retrieval_rate"
    assert data["comparisons"]["gate"][1]["units"] == [400, 400]


def test_many_requests_per_unit_widen_the_interval_by_the_design_effect(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    # 40 units of 10 requests per arm; a unit answers all its requests right or all wrong, so
    # each arm holds 40 independent observations, not 400.
    fill(log, exp, "control", 400, retrieve=400, correct=0, latency=lambda i: 100.0, units=40,
         labels=False)  # fmt: skip
    fill(log, exp, "gate", 400, retrieve=400, correct=0, latency=lambda i: 100.0, units=40,
         labels=False)  # fmt: skip
    rows = log.decisions(exp.name)
    right = {"control": {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, "gate": set(range(20))}
    log.record_outcomes(
        [
            Outcome(r.request_id, correct=int(r.unit_id.rsplit("-", 1)[1]) in right[r.arm])
            for r in rows
        ]
    )
    report = build_report(log, exp.name)
    control, gate = report.arms
    assert (control.units, control.requests, control.requests_per_unit) == (40, 400, 10.0)
    assert control.accuracy.value == pytest.approx(0.3) and gate.accuracy.value == 0.5
    acc = by_metric(report)["accuracy"]
    # By hand: Deng et al.'s delta method on unit sums (Y_i, N_i) plus the Agresti-Caffo
    # pseudo-units (1, 1) and (0, 1); Welch t.

    def arm_variance(successes_per_unit: list[float]) -> tuple[float, float, int]:
        y = np.array([*successes_per_unit, 1.0, 0.0])
        n = np.array([10.0] * len(successes_per_unit) + [1.0, 1.0])
        k = y.size
        cov = np.cov(np.vstack([y, n]), ddof=1)
        mu_y, mu_n = y.mean(), n.mean()
        var = (cov[0, 0] / mu_n**2 - 2 * mu_y / mu_n**3 * cov[0, 1]
               + mu_y**2 / mu_n**4 * cov[1, 1]) / k  # fmt: skip
        return mu_y / mu_n, var, k

    pc, vc, kc = arm_variance([10.0] * 12 + [0.0] * 28)
    pt, vt, kt = arm_variance([10.0] * 20 + [0.0] * 20)
    se = math.sqrt(vc + vt)
    df = (vc + vt) ** 2 / (vc**2 / (kc - 1) + vt**2 / (kt - 1))
    half = t_dist.ppf(0.975, df) * se
    assert acc.se == pytest.approx(se, rel=1e-9)
    assert (acc.low, acc.high) == pytest.approx((pt - pc - half, pt - pc + half), rel=1e-9)
    assert acc.p_value == pytest.approx(2 * t_dist.sf((pt - pc) / se, df), rel=1e-9)
    # All-or-nothing units: the variance is about m = 10 times the independent-requests one.
    assert 8 < acc.design_effect < 11
    # The request-level interval would have called this: 20 pp on 400 vs 400 requests.
    assert acc.p_value > 0.05 and not acc.significant(0.05)
    assert report.verdict.startswith("The data cannot tell yet whether gate or control")
    assert "units per arm (about" in report.verdict and "10.0 requests per unit" in report.verdict
    assert f"design effect {acc.design_effect:.2f}" in report.verdict
    # Per arm: a Wilson interval at the effective sample size p(1 - p) / var (no pseudo-counts).
    y = np.array([10.0] * 12 + [0.0] * 28)
    var = np.sum((y - 0.3 * 10) ** 2) * 40 / 39 / 400**2
    assert (control.accuracy.low, control.accuracy.high) == pytest.approx(
        wilson(0.3, 0.3 * 0.7 / var)
    )


def test_units_less_alike_than_chance_do_not_narrow_the_interval(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    # 30 units per arm, each with one right and one wrong answer: the unit ratios do not vary.
    for arm in ("control", "gate"):
        fill(log, exp, arm, 60, retrieve=60, correct=30, latency=lambda i: 100.0, units=30)
    report = build_report(log, exp.name)
    acc = by_metric(report)["accuracy"]
    assert acc.design_effect < 0.2
    # The interval is the one-request-per-unit interval of 60 requests per arm instead.
    *_, se = unit_agresti_caffo(30, 60, 30, 60)
    assert acc.se == pytest.approx(se, rel=1e-9)
    assert "counted as 1) would detect" in report.verdict


def test_units_in_two_arms_are_reported(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    log.record_rows(
        [synthetic_row(exp, f"c{i}", f"user-{i}", arm="control") for i in range(10)]
        + [synthetic_row(exp, f"g{i}", f"user-{i}", arm="gate") for i in range(3)]
    )
    report = build_report(log, exp.name)
    assert any(n.startswith("3 units appear in more than one arm") for n in report.notes)


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


def test_small_samples_cannot_tell_and_say_how_many_units_are_needed(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    fill(log, exp, "control", 30, retrieve=30, correct=15, latency=lambda i: 100.0 + i)
    fill(log, exp, "gate", 30, retrieve=15, correct=18, latency=lambda i: 100.0 + i)
    report = build_report(log, exp.name)
    assert report.verdict.startswith("The data cannot tell yet whether gate or control")
    # Units per arm to detect 2 pp at alpha 0.05 with 80% power, from the per-unit variance
    # of the accuracy difference: se^2 = sigma^2 (1/30 + 1/30), n = 2 z^2 sigma^2 / 0.02^2.
    *_, se = unit_agresti_caffo(18, 30, 15, 30)
    sigma2 = se**2 / (2 / 30)
    need = 2 * (norm.ppf(0.975) + norm.ppf(0.8)) ** 2 * sigma2 / 0.02**2
    found = re.search(r"about ([\d,]+) units per arm", report.verdict)
    assert found is not None and abs(int(found.group(1).replace(",", "")) - need) < 1
    assert "1.0 requests per unit; design effect 1.00) would detect" in report.verdict
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
    assert len(diffs) == 8 and all(d.p_adjusted >= d.p_value for d in diffs)
    g6 = {d.metric: d for d in report.comparisons["g6"]}
    assert g6["accuracy"].diff == pytest.approx(-0.3)
    sentences = report.verdict.split(". ")
    assert any(s.startswith("rag wins on accuracy over g6") for s in sentences)
    assert "g4 retrieves 50.0 pp less often than rag" in report.verdict
    assert "g4 - rag" in report.to_text() and "g6 - rag" in report.to_text()
