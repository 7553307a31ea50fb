"""Unit-level A/B statistics: hand-derived values, agreement of intervals and tests, coverage.

The expected values here come from the textbook formulas written out independently (Deng et
al.'s covariance form of the delta method, Agresti-Caffo, Agresti-Min, the one-way ANOVA
intraclass correlation, an explicit cluster resampling), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit, logit
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from knowgate.errors import ExperimentError
from knowgate.experiments.statistics import (
    Difference,
    UnitTotals,
    cluster_quantiles,
    holm_adjust,
    paired_binary,
    paired_continuous,
    quantile_difference,
    ratio_difference,
    ratio_estimate,
    ratio_variance,
    units_to_detect,
)

Z = stats.norm.ppf(0.975)


def clustered_binary(rng, units: int, size, base: float, spread: float):
    """Per-unit (successes, requests) with a random intercept of sd ``spread`` on the logit."""
    counts = np.broadcast_to(np.asarray(size, dtype=float), (units,)).copy()
    p = expit(logit(base) + rng.normal(0.0, spread, units))
    successes = rng.binomial(counts.astype(int), p).astype(float)
    return UnitTotals(successes, successes, counts)


def deng_variance(y: np.ndarray, n: np.ndarray) -> float:
    """Var(sum y / sum n) by Deng et al. (2018), eq. for a ratio of means, sample covariances."""
    k = y.size
    mu_y, mu_n = y.mean(), n.mean()
    cov = np.cov(np.vstack([y, n]), ddof=1)
    return float(
        (cov[0, 0] / mu_n**2 - 2 * mu_y / mu_n**3 * cov[0, 1] + mu_y**2 / mu_n**4 * cov[1, 1]) / k
    )


# ---------------------------------------------------------------- delta method, by hand
def test_delta_method_matches_dengs_covariance_form_and_design_effect() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 30, 80).astype(float)  # unequal requests per unit
    totals = clustered_binary(rng, 80, sizes, 0.3, 1.2)
    rv = ratio_variance(totals)
    assert rv.value == pytest.approx(totals.sums.sum() / sizes.sum())
    assert rv.variance == pytest.approx(deng_variance(totals.sums, sizes), rel=1e-12)
    # Request-level variance: the sample variance of the 0/1 requests over n.
    n = sizes.sum()
    p = totals.sums.sum() / n
    assert rv.request_variance == pytest.approx(p * (1 - p) / (n - 1), rel=1e-12)
    assert rv.design_effect == pytest.approx(rv.variance / rv.request_variance)
    assert rv.design_effect > 2  # a strong unit effect


def test_unit_totals_from_requests_sum_per_unit_and_reject_bad_input() -> None:
    totals = UnitTotals.from_requests(["b", "a", "b", "c", "b"], [1.0, 2.0, 3.0, 4.0, 5.0])
    # np.unique orders the ids: a, b, c.
    assert totals.sums.tolist() == [2.0, 9.0, 4.0]
    assert totals.squares.tolist() == [4.0, 35.0, 16.0]
    assert totals.counts.tolist() == [1.0, 3.0, 1.0]
    assert (totals.units, totals.requests) == (3, 5)
    with pytest.raises(ExperimentError, match="2 unit ids for 3 values"):
        UnitTotals.from_requests(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(ExperimentError, match="finite"):
        UnitTotals.from_requests(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ExperimentError, match="three equal 1-D arrays"):
        UnitTotals(np.zeros(3), np.zeros(3), np.zeros(2))
    with pytest.raises(ExperimentError, match="two units"):
        ratio_variance(UnitTotals.from_requests(["a", "a"], [1.0, 0.0]))


def test_design_effect_matches_one_plus_m_minus_one_icc() -> None:
    # Equal clusters of m requests: deff = 1 + (m - 1) ICC, with ICC from one-way ANOVA.
    rng = np.random.default_rng(2)
    k, m = 2000, 20
    totals = clustered_binary(rng, k, m, 0.3, 1.0)
    y = totals.sums
    grand = y.sum() / (k * m)
    msb = m * np.sum((y / m - grand) ** 2) / (k - 1)
    # Within-unit sum of squares of 0/1 requests: sum over units of y - y^2 / m.
    msw = np.sum(y - y**2 / m) / (k * (m - 1))
    icc = (msb - msw) / (msb + (m - 1) * msw)
    rv = ratio_variance(totals)
    assert 0.1 < icc < 0.3
    assert rv.design_effect == pytest.approx(1 + (m - 1) * icc, rel=0.02)


def test_delta_standard_error_agrees_with_a_cluster_bootstrap() -> None:
    rng = np.random.default_rng(3)
    k = 150
    sizes = rng.integers(1, 40, k).astype(float)
    totals = clustered_binary(rng, k, sizes, 0.4, 1.5)
    # Cluster bootstrap written out: resample units with replacement, recompute the ratio.
    draws = rng.integers(0, k, (4000, k))
    ratios = totals.sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    boot_se = ratios.std(ddof=1)
    assert math.sqrt(ratio_variance(totals).variance) == pytest.approx(boot_se, rel=0.06)


# ----------------------------------------------------- interval and test: one procedure
def test_ratio_difference_interval_and_p_value_are_one_procedure() -> None:
    rng = np.random.default_rng(4)
    c = clustered_binary(rng, 60, rng.integers(1, 15, 60), 0.3, 1.0)
    t = clustered_binary(rng, 50, rng.integers(1, 15, 50), 0.4, 1.0)
    d = ratio_difference("accuracy", c, t, binary=True)
    # By hand: Agresti-Caffo pseudo-counts as two one-request units per arm, Deng variances,
    # Welch-Satterthwaite degrees of freedom.
    pc = (c.sums.sum() + 1) / (c.counts.sum() + 2)
    pt = (t.sums.sum() + 1) / (t.counts.sum() + 2)
    vc = deng_variance(np.append(c.sums, [1, 0]), np.append(c.counts, [1, 1]))
    vt = deng_variance(np.append(t.sums, [1, 0]), np.append(t.counts, [1, 1]))
    # The unit effect makes both above the independent-requests variance p(1-p)/(n-1).
    assert vc > pc * (1 - pc) / (c.counts.sum() + 1) and vt > pt * (1 - pt) / (t.counts.sum() + 1)
    se = math.sqrt(vc + vt)
    df = (vc + vt) ** 2 / (vc**2 / 61 + vt**2 / 51)
    half = stats.t.ppf(0.975, df) * se
    assert d.se == pytest.approx(se, rel=1e-9)
    assert (d.low, d.high) == pytest.approx((pt - pc - half, pt - pc + half), rel=1e-9)
    assert d.p_value == pytest.approx(2 * stats.t.sf(abs(pt - pc) / se, df), rel=1e-9)
    assert d.diff == pytest.approx(t.sums.sum() / t.counts.sum() - c.sums.sum() / c.counts.sum())
    assert d.units == (60, 50) and d.requests == (c.requests, t.requests)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_interval_excludes_zero_exactly_when_p_is_below_alpha(alpha: float) -> None:
    rng = np.random.default_rng(5)
    seen = {True: 0, False: 0}
    for i in range(300):
        shift = rng.normal(0, 0.6)
        c = clustered_binary(rng, 40, rng.integers(1, 10, 40), 0.3, 1.0)
        t = clustered_binary(rng, 40, rng.integers(1, 10, 40), expit(logit(0.3) + shift), 1.0)
        lat_c = UnitTotals(c.counts * 100 + rng.normal(0, 50, 40), c.counts * 1e4, c.counts)
        lat_t = UnitTotals(t.counts * 100 + rng.normal(10, 50, 40), t.counts * 1e4, t.counts)
        diffs = [
            ratio_difference("accuracy", c, t, alpha=alpha, binary=True),
            ratio_difference("latency_mean_ms", lat_c, lat_t, alpha=alpha),
            paired_binary(
                "accuracy", rng.random(50) < 0.5, rng.random(50) < 0.5 + shift / 4, alpha=alpha
            ),
            paired_continuous("score", rng.normal(0, 1, 30), rng.normal(shift, 1, 30), alpha=alpha),
        ]
        if i < 30:  # the bootstrap is slower: fewer draws
            units = [f"u{j % 12}" for j in range(60)]
            qc = cluster_quantiles(rng.lognormal(0, 1, 60), units, (0.5,), resamples=200, seed=i)
            qt = cluster_quantiles(rng.lognormal(shift, 1, 60), units, (0.5,), resamples=200)
            diffs.append(quantile_difference("latency_p50_ms", qc, qt, 0.5, alpha=alpha))
        for d in diffs:
            excludes = d.low > 0 or d.high < 0
            assert (d.p_value < alpha) == excludes, d
            seen[excludes] += 1
    assert min(seen.values()) > 100  # both sides of the line were exercised


def test_the_borderline_readme_case_no_longer_contradicts_itself() -> None:
    # 20/174 vs 25/126, one request per unit: the old report printed "+0.1 pp" and "p=0.052".
    c = UnitTotals(
        np.r_[np.ones(25), np.zeros(101)], np.r_[np.ones(25), np.zeros(101)], np.ones(126)
    )
    t = UnitTotals(
        np.r_[np.ones(20), np.zeros(154)], np.r_[np.ones(20), np.zeros(154)], np.ones(174)
    )
    d = ratio_difference("accuracy", c, t, binary=True)
    assert (d.p_value < 0.05) == (d.high < 0)


# ------------------------------------------------------------- one request per unit
def test_one_request_per_unit_agrees_with_request_level_intervals() -> None:
    rng = np.random.default_rng(6)
    n_c, n_t = 1500, 1300
    yc = (rng.random(n_c) < 0.30).astype(float)
    yt = (rng.random(n_t) < 0.34).astype(float)
    c, t = UnitTotals(yc, yc, np.ones(n_c)), UnitTotals(yt, yt, np.ones(n_t))
    d = ratio_difference("accuracy", c, t, binary=True)
    low, high = confint_proportions_2indep(
        yt.sum(), n_t, yc.sum(), n_c, method="agresti-caffo", compare="diff"
    )
    assert d.design_effect == pytest.approx(1.0)
    assert (d.low, d.high) == pytest.approx((low, high), abs=2e-4)
    e = ratio_estimate(t, binary=True)
    assert (e.low, e.high) == pytest.approx(
        proportion_confint(yt.sum(), n_t, method="wilson"), abs=2e-4
    )
    # Means: Welch's t interval on the requests.
    xc, xt = rng.lognormal(7, 0.5, n_c), rng.lognormal(7.05, 0.5, n_t)
    mean_diff = ratio_difference(
        "latency_mean_ms", UnitTotals(xc, xc**2, np.ones(n_c)), UnitTotals(xt, xt**2, np.ones(n_t))
    )
    welch = stats.ttest_ind(xt, xc, equal_var=False)
    ci = welch.confidence_interval()
    assert (mean_diff.low, mean_diff.high) == pytest.approx((ci.low, ci.high), rel=1e-3)
    assert mean_diff.p_value == pytest.approx(welch.pvalue, rel=1e-3)


def test_a_design_effect_below_one_never_narrows_the_interval() -> None:
    # Every unit's requests average exactly 150 (100 and 200 alternate): the unit sums vary
    # less than independent requests would, so the delta method alone would say se = 0.
    values = np.tile([100.0, 200.0], 20)
    units = np.repeat(np.arange(10), 4).astype(str)
    c = UnitTotals.from_requests(units.tolist(), values)
    t = UnitTotals.from_requests(units.tolist(), values + 30.0)
    d = ratio_difference("latency_mean_ms", c, t)
    assert d.design_effect == pytest.approx(0.0)
    # The interval uses the independent-requests variance s^2 / n per arm instead.
    s2 = values.var(ddof=1) / 40
    assert d.se == pytest.approx(math.sqrt(2 * s2))
    half = stats.t.ppf(0.975, (2 * s2) ** 2 / (2 * s2**2 / 9)) * math.sqrt(2 * s2)
    assert (d.low, d.high) == pytest.approx((30 - half, 30 + half))
    e = ratio_estimate(c)
    assert e.high - e.value == pytest.approx(stats.t.ppf(0.975, 9) * math.sqrt(s2))


def test_proportions_at_zero_keep_an_honest_interval() -> None:
    zero = UnitTotals(np.zeros(30), np.zeros(30), np.ones(30))
    d = ratio_difference("accuracy", zero, zero, binary=True)
    assert d.diff == 0 and d.p_value == pytest.approx(1.0)
    assert d.low < -0.05 and d.high > 0.05  # 30 requests per arm cannot pin 0 pp down
    e = ratio_estimate(zero, binary=True)
    assert (
        e.value == 0
        and e.low == 0
        and e.high == pytest.approx(proportion_confint(0, 30, method="wilson")[1])
    )
    one_unit = UnitTotals(np.array([5.0]), np.array([5.0]), np.array([10.0]))
    d = ratio_difference("accuracy", one_unit, zero, binary=True)
    assert d.p_value is None and "fewer than 2 units" in d.test
    assert ratio_estimate(one_unit, binary=True).low is None


# ------------------------------------------------------------------ A/A coverage
def test_aa_coverage_at_the_unit_versus_at_the_request() -> None:
    """200 units x 20 requests, strong unit effects, 400 A/A experiments (true difference 0)."""
    experiments, units, m = 400, 200, 20
    rng = np.random.default_rng(20260601)
    arm = rng.random((experiments, units)) < 0.5
    correct = rng.binomial(m, expit(logit(0.3) + rng.normal(0, 1.5, (experiments, units))))
    retrieve = rng.binomial(m, expit(logit(0.6) + rng.normal(0, 2.0, (experiments, units))))
    latency = np.exp(
        np.log(1500)
        + rng.normal(0, 0.5, (experiments, units, 1))  # the unit's own speed
        + rng.normal(0, 0.3, (experiments, units, m))
    )
    metrics = {
        "accuracy": (correct.astype(float), correct.astype(float), True),
        "retrieval_rate": (retrieve.astype(float), retrieve.astype(float), True),
        "latency_mean_ms": (latency.sum(-1), (latency**2).sum(-1), False),
    }
    counts = np.full(units, float(m))
    covered = dict.fromkeys(metrics, 0)
    naive = dict.fromkeys(metrics, 0)
    for e in range(experiments):
        t_mask = arm[e]
        for name, (sums, squares, binary) in metrics.items():
            c = UnitTotals(sums[e][~t_mask], squares[e][~t_mask], counts[~t_mask])
            t = UnitTotals(sums[e][t_mask], squares[e][t_mask], counts[t_mask])
            d = ratio_difference(name, c, t, binary=binary)
            covered[name] += d.low <= 0 <= d.high
            # Request-level Wald interval, as if the 20 requests of a unit were independent.
            var = 0.0
            for arm_totals in (c, t):
                n = arm_totals.requests
                mean = arm_totals.sums.sum() / n
                var += (arm_totals.squares.sum() / n - mean**2) / n
            naive[name] += abs(d.diff) <= Z * math.sqrt(var)
    coverage = {k: v / experiments for k, v in covered.items()}
    request_level = {k: v / experiments for k, v in naive.items()}
    print(f"unit-level coverage {coverage}; request-level coverage {request_level}")
    for name in metrics:
        assert coverage[name] >= 0.93, (name, coverage, request_level)
        assert request_level[name] < 0.75, (name, coverage, request_level)


def test_aa_coverage_of_the_median_latency_bootstrap() -> None:
    experiments, units, m = 160, 120, 10
    rng = np.random.default_rng(20260602)
    ids = np.repeat(np.arange(units), m).astype(str)
    covered = naive = 0
    for e in range(experiments):
        arm = np.repeat(rng.random(units) < 0.5, m)
        latency = np.exp(
            np.log(1500) + np.repeat(rng.normal(0, 0.5, units), m) + rng.normal(0, 0.3, units * m)
        )
        qs = [
            cluster_quantiles(latency[mask], ids[mask], (0.5,), resamples=200, seed=[e, j])
            for j, mask in enumerate((~arm, arm))
        ]
        d = quantile_difference("latency_p50_ms", *qs, 0.5)
        covered += d.low <= 0 <= d.high
        # The same bootstrap with every request its own unit: the request-level interval.
        rq = [
            cluster_quantiles(
                latency[mask], np.arange(mask.sum()).astype(str), (0.5,), resamples=200, seed=e
            )
            for mask in (~arm, arm)
        ]
        r = quantile_difference("latency_p50_ms", *rq, 0.5)
        naive += r.low <= 0 <= r.high
    print(f"p50: unit-level coverage {covered / experiments}, request-level {naive / experiments}")
    assert covered / experiments >= 0.9
    assert naive / experiments < 0.75


# ------------------------------------------------------------------ cluster bootstrap
def test_cluster_quantiles_equal_quantiles_of_the_explicitly_resampled_requests() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(0, 1, 57)
    units = [f"u{i % 9}" for i in range(57)]
    result = cluster_quantiles(values, units, (0.5, 0.95), resamples=20, seed=11)
    # Replay the same multinomial draws of units and expand the requests by hand.
    replay_rng = np.random.default_rng(11)
    _, codes = np.unique(units, return_inverse=True)
    for r in range(20):
        draws = replay_rng.multinomial(9, np.full(9, 1 / 9))
        expanded = np.repeat(values, draws[codes])
        assert result.replicates[r] == pytest.approx(np.quantile(expanded, [0.5, 0.95]))
    assert result.values == pytest.approx(np.quantile(values, [0.5, 0.95]))
    p50 = result.estimate(0.5)
    assert p50.low == pytest.approx(np.quantile(result.replicates[:, 0], 0.025))
    with pytest.raises(ExperimentError, match="quantile levels"):
        cluster_quantiles(values, units, (1.5,))
    with pytest.raises(ExperimentError, match="3 unit ids for 57 values"):
        cluster_quantiles(values, units[:3], (0.5,))


def test_clustered_latency_widens_the_median_interval() -> None:
    rng = np.random.default_rng(8)
    speed = np.repeat(rng.normal(0, 0.6, 40), 25)
    values = np.exp(7 + speed + rng.normal(0, 0.2, 1000))
    by_unit = cluster_quantiles(values, np.repeat(np.arange(40), 25).astype(str), (0.5,))
    by_request = cluster_quantiles(values, np.arange(1000).astype(str), (0.5,))
    width = {
        name: r.estimate(0.5).high - r.estimate(0.5).low
        for name, r in (("unit", by_unit), ("request", by_request))
    }
    assert width["unit"] > 2 * width["request"]


# ------------------------------------------------------------------------- paired
def test_paired_binary_is_agresti_min_by_hand() -> None:
    # 10 questions only the treatment gets right, 2 only the control, 38 agree.
    control = [False] * 10 + [True] * 2 + [True] * 30 + [False] * 8
    treatment = [True] * 10 + [False] * 2 + [True] * 30 + [False] * 8
    d = paired_binary("accuracy", control, treatment)
    centre = (10 - 2) / 52
    se = math.sqrt(((10 + 2 + 1) / 52 - centre**2) / 52)
    assert d.diff == pytest.approx(8 / 50)
    assert (d.low, d.high) == pytest.approx((centre - Z * se, centre + Z * se))
    assert d.p_value == pytest.approx(2 * stats.norm.sf(centre / se))
    with pytest.raises(ExperimentError, match="equal 1-D shapes"):
        paired_binary("accuracy", [True], [True, False])


def test_paired_continuous_is_the_paired_t_test() -> None:
    a = np.linspace(1, 2, 40)
    noise = np.sin(np.arange(40))
    d = paired_continuous("wall_time_s", a, a + 0.5 + 0.1 * noise, lower_is_better=True)
    diffs = 0.5 + 0.1 * noise
    se = diffs.std(ddof=1) / math.sqrt(40)
    half = stats.t.ppf(0.975, 39) * se
    assert d.diff == pytest.approx(diffs.mean())
    assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert d.p_value == pytest.approx(2 * stats.t.sf(diffs.mean() / se, 39))
    shift = paired_continuous("wall_time_s", a, a + 0.5)  # a constant shift (up to rounding)
    assert (shift.low, shift.high) == pytest.approx((0.5, 0.5)) and shift.p_value == 0.0
    assert paired_continuous("wall_time_s", a, a).p_value == 1.0


# -------------------------------------------------------------- adjustment and power
def test_holm_by_hand() -> None:
    diffs = [Difference("m", 0, 0, 0, None, None, p, "t") for p in (0.01, 0.04, 0.03)]
    diffs.append(Difference("m", 0, 0, 0, None, None, None, "none"))
    adjusted = [d.p_adjusted for d in holm_adjust(diffs)]
    # Sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04).
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, None])


def test_units_to_detect_from_the_per_unit_variance() -> None:
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    d = Difference("accuracy", 0.3, 0.3, 0.0, None, None, 1.0, "t", se=0.02, units=(100, 300))
    # se^2 = sigma^2 (1/100 + 1/300); n per arm = 2 z^2 sigma^2 / delta^2 (normal theory).
    sigma2 = 0.02**2 / (1 / 100 + 1 / 300)
    need = units_to_detect(d, 0.02)
    assert need is not None and abs(need - 2 * z**2 * sigma2 / 0.02**2) < 1
    paired = Difference(
        "accuracy", 0.3, 0.3, 0.0, None, None, 1.0, "t", se=0.01, units=(400, 400), paired=True
    )
    need = units_to_detect(paired, 0.02)
    assert need is not None and abs(need - z**2 * 0.01**2 * 400 / 0.02**2) < 1
    assert units_to_detect(Difference("m", 0, 0, 0, None, None, None, "none"), 0.02) is None
