"""Statistics for reports and replays: each interval comes from the same procedure as its test.

**A/B tests randomise units** (users, sessions), not requests: a unit's requests share the
user's habits, so they are correlated, and treating them as independent makes intervals too
narrow. Every A/B number is therefore analysed at the unit:

- A per-arm metric over requests (accuracy, retrieval rate, mean latency, mean score) is a
  *ratio of unit sums*, ``R = sum_i Y_i / sum_i N_i`` (``Y_i`` the unit's summed outcome,
  ``N_i`` its requests). Its variance comes from the delta method (Deng, Knoblich and Lu, 2018,
  "Applying the Delta Method in Metric Analytics"): ``K / (K - 1) * sum_i (Y_i - R N_i)^2 /
  (sum_i N_i)^2`` over ``K`` units. The *design effect* is that variance divided by the one
  that treats requests as independent (1 when every unit sends one request). Intervals never
  use less than the independent-requests variance: a design effect below 1 is noise.
- The difference between two independent arms has variance ``var_control + var_treatment``;
  its test statistic ``diff / se`` is referred to Student's t with Welch-Satterthwaite degrees
  of freedom, and its interval is ``diff +- t * se``: one procedure, so the interval excludes 0
  exactly when ``p < alpha``. Proportions get Agresti and Caffo's (2000) pseudo-counts - one
  success and one failure per arm, added as two one-request units - which keep the interval
  honest at 0 % and 100 %; with one request per unit this *is* their interval.
- Per-arm proportion intervals are Wilson intervals at the effective sample size
  ``p (1 - p) / var`` (never above the number of requests: Korn and Graubard, 1998).
- Latency percentiles: a cluster bootstrap that resamples units with all their requests.
  Per-arm intervals are bootstrap percentiles; the difference of two arms' medians uses the
  bootstrap standard error for both its normal interval and its test, so they agree too.
- Power: the units per arm that would detect a given difference, from the per-unit variance
  the data show (design effect included; ``statsmodels`` ``NormalIndPower``).

**Offline replay pairs** two policies on the same questions (the question is the unit):
Agresti and Min's (2005) adjusted Wald interval and test for paired proportions, the paired
t-test and its interval for times and scores (``scipy``).

Several comparisons in one report: Holm's step-down adjustment of the p-values
(``statsmodels``). Intervals stay unadjusted; the verdicts decide on the adjusted p-values and
say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from knowgate.errors import ExperimentError

BOOTSTRAP_RESAMPLES = 1000  # enough for 95% percentile intervals (Efron & Tibshirani 1993)
_BOOTSTRAP_CELLS = 4_000_000  # resamples x requests per vectorised batch: bounds memory


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (bounds ``None`` when not estimable)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """Treatment minus control on one metric, with interval and test from one procedure.

    Attributes:
        metric: ``accuracy``, ``retrieval_rate``, ``latency_mean_ms``, ``latency_p50_ms``,
            ``score``, ``wall_time_s``.
        control: the control's value.
        treatment: the treatment's value.
        diff: ``treatment - control``.
        low: lower bound of the (unadjusted) confidence interval of ``diff``.
        high: upper bound.
        p_value: the test's two-sided p-value (``None``: not testable, e.g. no data).
        test: the procedure's name.
        lower_is_better: for cost metrics (retrieval rate, latency, wall time).
        p_adjusted: Holm-adjusted over every comparison in the same report.
        se: the standard error behind the interval and the test.
        design_effect: ``se^2`` over the variance if requests were independent (``None`` when
            not computed, e.g. for bootstrap quantiles and paired designs).
        units: independent units (control, treatment): users or sessions, or questions when
            paired.
        requests: the requests those units sent (control, treatment).
        paired: both policies were judged on the same questions.
    """

    metric: str
    control: float | None
    treatment: float | None
    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    test: str
    lower_is_better: bool = False
    p_adjusted: float | None = None
    se: float | None = None
    design_effect: float | None = None
    units: tuple[int, int] | None = None
    requests: tuple[int, int] | None = None
    paired: bool = False

    def significant(self, alpha: float) -> bool:
        """Whether the (Holm-adjusted, when adjusted) p-value is below ``alpha``."""
        p = self.p_adjusted if self.p_adjusted is not None else self.p_value
        return p is not None and p < alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _float(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------ unit-level ratios
@dataclass(frozen=True)
class UnitTotals:
    """One metric summed per unit: all a ratio metric's delta-method variance needs.

    Attributes:
        sums: per unit, the sum of the metric over its requests (``Y_i``).
        squares: per unit, the sum of squares (for the request-level variance).
        counts: per unit, the requests with a value (``N_i``).
    """

    sums: NDArray[np.float64]
    squares: NDArray[np.float64]
    counts: NDArray[np.float64]

    def __post_init__(self) -> None:
        shapes = {np.shape(self.sums), np.shape(self.squares), np.shape(self.counts)}
        if len(shapes) != 1 or np.ndim(self.counts) != 1:
            raise ExperimentError(f"unit totals need three equal 1-D arrays, got shapes {shapes}")

    @classmethod
    def from_requests(cls, units: Sequence[str], values: ArrayLike) -> UnitTotals:
        """Sum request-level values per unit id.

        Raises:
            ExperimentError: lengths differ, or a value is not finite.
        """
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1 or len(units) != x.size:
            raise ExperimentError(f"{len(units)} unit ids for {x.size} values")
        if not np.all(np.isfinite(x)):
            raise ExperimentError("unit totals need finite values")
        if x.size == 0:
            empty = np.zeros(0)
            return cls(empty, empty, empty)
        _, codes = np.unique(np.asarray(units, dtype=str), return_inverse=True)
        return cls(
            np.bincount(codes, weights=x).astype(np.float64),
            np.bincount(codes, weights=x * x).astype(np.float64),
            np.bincount(codes).astype(np.float64),
        )

    @property
    def units(self) -> int:
        """Units with at least one request."""
        return int(np.count_nonzero(self.counts))

    @property
    def requests(self) -> int:
        """Requests with a value."""
        return int(self.counts.sum())

    def with_pseudo_counts(self) -> UnitTotals:
        """Add one success and one failure as two one-request units (Agresti-Caffo)."""
        return UnitTotals(
            np.append(self.sums, [1.0, 0.0]),
            np.append(self.squares, [1.0, 0.0]),
            np.append(self.counts, [1.0, 1.0]),
        )


@dataclass(frozen=True)
class RatioVariance:
    """A ratio metric with its unit-level (delta-method) and request-level variances."""

    value: float
    variance: float
    request_variance: float
    units: int
    requests: int

    @property
    def design_effect(self) -> float | None:
        """How many times the unit-level variance exceeds the independent-requests one."""
        if self.request_variance <= 0:
            return None
        return self.variance / self.request_variance

    @property
    def interval_variance(self) -> float:
        """The variance intervals and tests use: never below the independent-requests one.

        Units are randomised, so their requests are at least as alike as unrelated requests;
        an estimated design effect below 1 is noise (the delta method's estimate is noisy with
        few units), and taking it at face value would narrow the interval below what even
        independent requests support. Korn and Graubard (1998) truncate the same way.
        """
        return max(self.variance, self.request_variance)


def ratio_variance(totals: UnitTotals) -> RatioVariance:
    """Delta-method variance of ``sum Y_i / sum N_i`` over units (Deng et al. 2018).

    Units without requests are left out. The request-level variance is the same formula with
    every request as its own unit, so the two agree when each unit sends one request.

    Raises:
        ExperimentError: fewer than two units, or fewer than two requests.
    """
    keep = totals.counts > 0
    sums, squares, counts = totals.sums[keep], totals.squares[keep], totals.counts[keep]
    k, n = int(keep.sum()), float(counts.sum())
    if k < 2 or n < 2:
        raise ExperimentError(f"a unit-level variance needs two units, got {k} unit(s)")
    total = float(sums.sum())
    value = total / n
    residuals = sums - value * counts  # each unit's linearised contribution
    variance = k / (k - 1) * float(np.sum(residuals**2)) / n**2
    # sum over requests of (y - R)^2 = sum y^2 - R sum y, since sum y = R n.
    spread = max(float(squares.sum()) - value * total, 0.0)
    request_variance = n / (n - 1) * spread / n**2
    return RatioVariance(value, max(variance, 0.0), request_variance, k, int(n))


def ratio_estimate(totals: UnitTotals, alpha: float = 0.05, *, binary: bool = False) -> Estimate:
    """A per-arm ratio metric with its unit-aware interval.

    Proportions (``binary``): a Wilson interval at the effective sample size
    ``p (1 - p) / variance``, capped at the number of requests (Korn and Graubard, 1998),
    which stays inside [0, 1] and does not collapse at 0 % or 100 %. Means: ``t`` with
    ``units - 1`` degrees of freedom. Bounds are ``None`` with fewer than two units.
    """
    from scipy import stats
    from statsmodels.stats.proportion import proportion_confint

    if totals.requests == 0:
        return Estimate(None)
    value = float(totals.sums.sum()) / totals.requests
    if totals.units < 2 or totals.requests < 2:
        return Estimate(value)
    rv = ratio_variance(totals)
    if binary:
        n = float(rv.requests)
        spread = value * (1.0 - value)
        effective = n if spread == 0 or rv.variance <= spread / n else spread / rv.variance
        low, high = proportion_confint(value * effective, effective, alpha=alpha, method="wilson")
        return Estimate(value, _float(low), _float(high))
    half = float(stats.t.ppf(1 - alpha / 2, rv.units - 1)) * math.sqrt(rv.interval_variance)
    return Estimate(value, value - half, value + half)


def ratio_difference(
    metric: str,
    control: UnitTotals,
    treatment: UnitTotals,
    *,
    alpha: float = 0.05,
    binary: bool = False,
    lower_is_better: bool = False,
) -> Difference:
    """Independent arms: the difference of two ratio metrics, analysed at the unit.

    ``se^2 = var_control + var_treatment`` (delta method per arm, never below the variance of
    independent requests: see :attr:`RatioVariance.interval_variance`); ``t = diff / se`` with
    Welch-Satterthwaite degrees of freedom gives the p-value, and ``diff +- t_crit * se`` the
    interval, so the interval excludes 0 exactly when ``p < alpha``. For proportions
    (``binary``) both come from the Agresti-Caffo-adjusted arms; ``diff`` is the raw one.
    Not testable (``p_value`` ``None``) when an arm has fewer than two units.

    Args:
        metric: the metric's name.
        control: the control's unit totals.
        treatment: the treatment's.
        alpha: 1 - confidence level.
        binary: the values are 0/1 (adds the pseudo-counts).
        lower_is_better: whether this is a cost.
    """
    from scipy import stats

    nc, nt = control.requests, treatment.requests
    base = Difference(
        metric,
        float(control.sums.sum()) / nc if nc else None,
        float(treatment.sums.sum()) / nt if nt else None,
        None,
        None,
        None,
        None,
        "none",
        lower_is_better,
        units=(control.units, treatment.units),
        requests=(nc, nt),
    )
    if base.control is None or base.treatment is None:
        return base
    base = replace(base, diff=base.treatment - base.control)
    if control.units < 2 or treatment.units < 2:  # no between-unit spread to measure
        return replace(base, test="none (fewer than 2 units in an arm)")
    if binary:
        control, treatment = control.with_pseudo_counts(), treatment.with_pseudo_counts()
    vc, vt = ratio_variance(control), ratio_variance(treatment)
    centre = vt.value - vc.value
    var_c, var_t = vc.interval_variance, vt.interval_variance
    variance = var_c + var_t
    independent = vc.request_variance + vt.request_variance
    base = replace(
        base,
        test="unit-level delta method"
        + (", Agresti-Caffo adjusted" if binary else "")
        + ", Welch t",
        se=math.sqrt(variance),
        # As estimated (it may fall below 1); the interval uses at least the independent one.
        design_effect=(vc.variance + vt.variance) / independent if independent > 0 else None,
    )
    if variance == 0.0:  # every request of both arms has the same value: no spread at all
        return replace(base, low=centre, high=centre, p_value=1.0 if centre == 0 else 0.0)
    df = variance**2 / (var_c**2 / (vc.units - 1) + var_t**2 / (vt.units - 1))
    se = math.sqrt(variance)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return replace(
        base,
        low=centre - half,
        high=centre + half,
        p_value=float(2 * stats.t.sf(abs(centre) / se, df)),
    )


# ------------------------------------------------------------ cluster bootstrap (quantiles)
@dataclass(frozen=True)
class ClusterQuantiles:
    """Quantiles of request-level values with their cluster-bootstrap replicates.

    Attributes:
        qs: the quantile levels (e.g. ``(0.5, 0.95)``).
        values: the quantiles of all requests (numpy's linear interpolation).
        replicates: ``(resamples, len(qs))``: the same quantiles after resampling units with
            replacement, each with all its requests; ``None`` with fewer than two units.
        units: distinct units.
        requests: requests.
    """

    qs: tuple[float, ...]
    values: NDArray[np.float64]
    replicates: NDArray[np.float64] | None
    units: int
    requests: int

    def estimate(self, q: float, alpha: float = 0.05) -> Estimate:
        """The ``q`` quantile with its bootstrap percentile interval."""
        if self.requests == 0:
            return Estimate(None)
        j = self.qs.index(q)
        value = float(self.values[j])
        if self.replicates is None:
            return Estimate(value)
        low, high = np.quantile(self.replicates[:, j], [alpha / 2, 1 - alpha / 2])
        return Estimate(value, float(low), float(high))


def cluster_quantiles(
    values: ArrayLike,
    units: Sequence[str],
    qs: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int | Sequence[int] = 0,
) -> ClusterQuantiles:
    """Quantiles of ``values`` and their cluster-bootstrap distribution over ``units``.

    A resample draws units with replacement (multinomial counts) and takes the quantile of
    the pooled requests, each request repeated as often as its unit was drawn - the same
    linear interpolation as ``numpy.quantile`` on the expanded sample, computed without
    expanding it.

    Raises:
        ExperimentError: lengths differ, a value is not finite, or a level is outside [0, 1].
    """
    x = np.asarray(values, dtype=np.float64)
    levels = tuple(float(q) for q in qs)
    if x.ndim != 1 or len(units) != x.size:
        raise ExperimentError(f"{len(units)} unit ids for {x.size} values")
    if not np.all(np.isfinite(x)):
        raise ExperimentError("quantiles need finite values")
    if not levels or any(not 0 <= q <= 1 for q in levels):
        raise ExperimentError(f"quantile levels must lie in [0, 1], got {levels}")
    if x.size == 0:
        return ClusterQuantiles(levels, np.full(len(levels), np.nan), None, 0, 0)
    point = np.quantile(x, levels)
    _, codes = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    k = int(codes.max()) + 1
    if k < 2:
        return ClusterQuantiles(levels, point, None, k, x.size)
    if np.all(x == x[0]):  # every resample pools the same value
        return ClusterQuantiles(levels, point, np.full((resamples, len(levels)), x[0]), k, x.size)
    order = np.argsort(x, kind="stable")
    ordered, unit_of = x[order], codes[order]
    rng = np.random.default_rng(seed)
    batch = max(1, _BOOTSTRAP_CELLS // x.size)
    out = np.empty((resamples, len(levels)))
    for start in range(0, resamples, batch):
        b = min(batch, resamples - start)
        draws = rng.multinomial(k, np.full(k, 1.0 / k), size=b)  # times each unit is drawn
        cumulative = np.cumsum(draws[:, unit_of], axis=1)  # expanded rank of each request
        totals = cumulative[:, -1]
        # Offsetting each row keeps the flattened array sorted: one searchsorted for all rows.
        offset = (np.arange(b) * (int(totals.max()) + 1))[:, None]
        flat = (cumulative + offset).ravel()
        rows = np.arange(b) * x.size
        for j, q in enumerate(levels):
            h = q * (totals - 1)
            lo = np.floor(h)
            hi = np.minimum(lo + 1, totals - 1)
            i_lo = np.searchsorted(flat, lo + offset[:, 0], side="right") - rows
            i_hi = np.searchsorted(flat, hi + offset[:, 0], side="right") - rows
            out[start : start + b, j] = ordered[i_lo] + (h - lo) * (ordered[i_hi] - ordered[i_lo])
    return ClusterQuantiles(levels, point, out, k, x.size)


def quantile_difference(
    metric: str,
    control: ClusterQuantiles,
    treatment: ClusterQuantiles,
    q: float,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = True,
) -> Difference:
    """Independent arms: difference of a quantile, from the arms' cluster bootstraps.

    The bootstrap standard error of the difference (the arms resample independently) gives
    both the normal interval ``diff +- z * se`` and the z-test, so they agree.
    """
    from scipy import stats

    base = Difference(
        metric,
        control.estimate(q).value,
        treatment.estimate(q).value,
        None,
        None,
        None,
        None,
        "none",
        lower_is_better,
        units=(control.units, treatment.units),
        requests=(control.requests, treatment.requests),
    )
    if base.control is None or base.treatment is None:
        return base
    diff = base.treatment - base.control
    base = replace(base, diff=diff)
    if control.replicates is None or treatment.replicates is None:
        return replace(base, test="none (fewer than 2 units in an arm)")
    replicates = treatment.replicates[:, treatment.qs.index(q)]
    replicates = replicates - control.replicates[:, control.qs.index(q)]
    se = float(np.std(replicates, ddof=1))
    base = replace(base, test="unit-level cluster bootstrap, normal interval and z-test", se=se)
    if se == 0.0:
        return replace(base, low=diff, high=diff, p_value=1.0 if diff == 0 else 0.0)
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return replace(
        base,
        low=diff - half,
        high=diff + half,
        p_value=float(2 * stats.norm.sf(abs(diff) / se)),
    )


# ------------------------------------------------------------------- independent questions
def proportion(count: int, nobs: int, alpha: float = 0.05) -> Estimate:
    """A proportion of independent observations with its Wilson score interval."""
    from statsmodels.stats.proportion import proportion_confint

    if nobs <= 0:
        return Estimate(None)
    low, high = proportion_confint(count, nobs, alpha=alpha, method="wilson")
    return Estimate(count / nobs, _float(low), _float(high))


def mean_interval(values: ArrayLike, alpha: float = 0.05) -> Estimate:
    """A mean of independent observations with its t interval."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Estimate(None)
    mean = float(x.mean())
    if x.size < 2 or float(x.std()) == 0.0:
        return Estimate(mean, mean if x.size > 1 else None, mean if x.size > 1 else None)
    low, high = stats.t.interval(1 - alpha, x.size - 1, loc=mean, scale=stats.sem(x))
    return Estimate(mean, _float(low), _float(high))


def _paired_arrays(
    control: ArrayLike, treatment: ArrayLike, dtype: type
) -> tuple[NDArray[Any], NDArray[Any]]:
    c: NDArray[Any] = np.asarray(control, dtype=dtype)
    t: NDArray[Any] = np.asarray(treatment, dtype=dtype)
    if c.shape != t.shape or c.ndim != 1:
        raise ExperimentError(f"paired samples need equal 1-D shapes, got {c.shape} and {t.shape}")
    return c, t


def paired_binary(
    metric: str,
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
) -> Difference:
    """Paired 0/1 outcomes: Agresti and Min's (2005) adjusted Wald interval and its test.

    Half a pair is added to each cell of the 2x2 table (``n' = n + 2``); the adjusted
    difference ``(n10 - n01) / n'`` and its standard error give both the z-test and the
    interval, so they agree (McNemar's test, which they replace, has no matching interval).
    ``diff`` is the raw difference of the two proportions.
    """
    from scipy import stats

    c, t = _paired_arrays(control, treatment, bool)
    n = int(c.size)
    if n == 0:
        return Difference(metric, None, None, None, None, None, None, "none", lower_is_better)
    only_t = int(np.sum(t & ~c))
    only_c = int(np.sum(c & ~t))
    size = n + 2.0
    centre = (only_t - only_c) / size
    se = math.sqrt(((only_t + only_c + 1.0) / size - centre**2) / size)
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return Difference(
        metric,
        float(c.mean()),
        float(t.mean()),
        float(t.mean() - c.mean()),
        centre - half,
        centre + half,
        float(2 * stats.norm.sf(abs(centre) / se)),
        "paired proportions, Agresti-Min adjusted Wald interval and z-test",
        lower_is_better,
        se=se,
        units=(n, n),
        requests=(n, n),
        paired=True,
    )


def paired_continuous(
    metric: str,
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
) -> Difference:
    """Paired numbers: the paired t-test and its interval of the mean difference (scipy)."""
    from scipy import stats

    c, t = _paired_arrays(control, treatment, np.float64)
    n = int(c.size)
    if n == 0:
        return Difference(metric, None, None, None, None, None, None, "none", lower_is_better)
    d = t - c
    diff = float(d.mean())
    base = Difference(
        metric,
        float(c.mean()),
        float(t.mean()),
        diff,
        None,
        None,
        None,
        "paired t-test and interval",
        lower_is_better,
        units=(n, n),
        requests=(n, n),
        paired=True,
    )
    if n < 2:
        return replace(base, test="none (fewer than 2 pairs)")
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # a constant shift: no spread to test
        return replace(base, low=diff, high=diff, p_value=1.0 if diff == 0 else 0.0, se=0.0)
    result = stats.ttest_rel(t, c)
    ci = result.confidence_interval(1 - alpha)
    return replace(
        base,
        low=_float(ci.low),
        high=_float(ci.high),
        p_value=_float(result.pvalue),
        se=float(stats.sem(d)),
    )


# ---------------------------------------------------------------- adjustment and power
def holm_adjust(differences: Sequence[Difference]) -> list[Difference]:
    """The same differences with Holm-adjusted p-values over all testable ones."""
    from statsmodels.stats.multitest import multipletests

    testable = [i for i, d in enumerate(differences) if d.p_value is not None]
    out = list(differences)
    if not testable:
        return out
    pvals = [differences[i].p_value for i in testable]
    adjusted = multipletests(pvals, method="holm")[1]
    for i, p in zip(testable, adjusted, strict=True):
        out[i] = replace(differences[i], p_adjusted=float(p))
    return out


def units_to_detect(
    d: Difference, delta: float, *, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Units per arm (or pairs) for a two-sided test of ``d``'s metric to detect ``delta``.

    The per-unit standard deviation comes from the interval the data give now
    (``se^2 = sigma^2 (1/K_control + 1/K_treatment)``, or ``sigma^2 / n`` paired), so it
    carries the design effect; the count assumes the same requests per unit and an even split
    (``statsmodels`` ``NormalIndPower``; ``ratio=0`` for the paired, one-sample case).
    ``None`` when ``d`` has no standard error.
    """
    from statsmodels.stats.power import NormalIndPower

    if d.se is None or d.se <= 0 or d.units is None or min(d.units) <= 0 or delta <= 0:
        return None
    kc, kt = d.units
    sigma = d.se * math.sqrt(kc) if d.paired else d.se / math.sqrt(1 / kc + 1 / kt)
    n = NormalIndPower().solve_power(
        effect_size=delta / sigma, alpha=alpha, power=power, ratio=0.0 if d.paired else 1.0
    )
    return math.ceil(float(n))
