"""The statistics behind reports and replays, each a thin wrapper over statsmodels or scipy.

- Proportions (retrieval rate, accuracy): Wilson intervals per arm; the difference between two
  arms by Agresti and Caffo's (2000) adjusted Wald interval and test - one success and one
  failure added to each arm - which behave well at 0 % and 100 % and agree with each other (the
  interval excludes 0 exactly when p < alpha) (``statsmodels``).
- Latency: distribution-free order-statistic intervals for p50/p95, a percentile-bootstrap
  interval for the difference of medians, and the Mann-Whitney U test for a shift
  (``scipy``); latencies are skewed, so no t-test.
- Paired comparisons (offline replay, both policies on the same questions): McNemar's test on
  the discordant pairs (exact binomial below 25 of them), Wilcoxon's signed-rank test for
  times, and a paired bootstrap for intervals.
- Several comparisons in one report: Holm's step-down adjustment of the p-values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

BOOTSTRAP_RESAMPLES = 1000  # enough for 95% percentile intervals (Efron & Tibshirani 1993)
_BATCH = 200  # resamples per vectorised batch: bounds memory on large logs


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
    """Treatment minus control on one metric, with interval and test.

    Attributes:
        metric: ``accuracy``, ``retrieval_rate``, ``latency_p50_ms``, ``wall_time_s``, ``score``.
        control: the control's value.
        treatment: the treatment's value.
        diff: ``treatment - control``.
        low: lower bound of the confidence interval of ``diff``.
        high: upper bound.
        p_value: the test's two-sided p-value (``None``: not testable, e.g. no data).
        p_adjusted: Holm-adjusted over every comparison in the same report.
        test: the test's name.
        lower_is_better: for cost metrics (retrieval rate, latency, wall time).
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

    def significant(self, alpha: float) -> bool:
        """Whether the (adjusted) p-value is below ``alpha``."""
        p = self.p_adjusted if self.p_adjusted is not None else self.p_value
        return p is not None and p < alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _float(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def proportion(count: int, nobs: int, alpha: float = 0.05) -> Estimate:
    """A proportion with its Wilson score interval."""
    from statsmodels.stats.proportion import proportion_confint

    if nobs <= 0:
        return Estimate(None)
    low, high = proportion_confint(count, nobs, alpha=alpha, method="wilson")
    return Estimate(count / nobs, _float(low), _float(high))


def mean_interval(values: ArrayLike, alpha: float = 0.05) -> Estimate:
    """A mean with its t interval."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Estimate(None)
    mean = float(x.mean())
    if x.size < 2 or float(x.std()) == 0.0:
        return Estimate(mean, mean if x.size > 1 else None, mean if x.size > 1 else None)
    low, high = stats.t.interval(1 - alpha, x.size - 1, loc=mean, scale=stats.sem(x))
    return Estimate(mean, _float(low), _float(high))


def _bootstrap(
    data: tuple[NDArray[np.float64], ...],
    statistic: Callable[..., Any],
    *,
    paired: bool,
    alpha: float,
    seed: int,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval; ``(v, v)`` when every resample is identical."""
    from scipy import stats

    if any(d.size < 2 for d in data):
        return None, None
    if all(np.all(d == d[0]) for d in data):  # constant samples: every resample is the same
        point = _float(statistic(*data, axis=-1))
        return point, point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "degenerate distribution" on constant data
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=BOOTSTRAP_RESAMPLES,
            batch=_BATCH,
            vectorized=True,
            paired=paired,
            confidence_level=1 - alpha,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = _float(res.confidence_interval.low), _float(res.confidence_interval.high)
    if low is None or high is None:
        point = _float(statistic(*data, axis=-1))
        return point, point
    return low, high


def quantile_interval(values: ArrayLike, q: float, alpha: float = 0.05) -> Estimate:
    """The ``q`` quantile with its distribution-free order-statistic interval.

    The interval comes from the binomial distribution of the number of observations below the
    quantile (``scipy.stats.quantile_test``); it needs no resampling, and its bounds are
    ``None`` when the sample is too small to reach the confidence level (e.g. a p95 from a
    handful of requests).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Estimate(None)
    value = float(np.quantile(x, q))
    ci = stats.quantile_test(x, q=value, p=q).confidence_interval(1 - alpha)
    return Estimate(value, _float(ci.low), _float(ci.high))


def two_proportions(
    metric: str,
    control: tuple[int, int],
    treatment: tuple[int, int],
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
) -> Difference:
    """Independent arms: difference of proportions, Agresti-Caffo interval and test.

    Args:
        metric: the metric's name.
        control: ``(count, n)`` of the control.
        treatment: ``(count, n)`` of the treatment.
        alpha: 1 - confidence level.
        lower_is_better: whether this is a cost.
    """
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        test_proportions_2indep,
    )

    (kc, nc), (kt, nt) = control, treatment
    if nc <= 0 or nt <= 0:
        pc = kc / nc if nc > 0 else None
        pt = kt / nt if nt > 0 else None
        return Difference(metric, pc, pt, None, None, None, None, "none", lower_is_better)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # ratio/odds-ratio terms divide by zero at 0 %
        low, high = confint_proportions_2indep(kt, nt, kc, nc, method="agresti-caffo", alpha=alpha)
        test = test_proportions_2indep(kt, nt, kc, nc, method="agresti-caffo")
    p = _float(test.pvalue)
    if p is None and kt * nc == kc * nt:
        p = 1.0  # identical proportions (e.g. both 0 % or both 100 %): no evidence of a gap
    return Difference(
        metric,
        kc / nc,
        kt / nt,
        kt / nt - kc / nc,
        _float(low),
        _float(high),
        p,
        "two proportions (Agresti-Caffo test and interval)",
        lower_is_better,
    )


def median_shift(
    metric: str,
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    seed: int = 0,
) -> Difference:
    """Independent arms: difference of medians (bootstrap interval), Mann-Whitney U test."""
    from scipy import stats

    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.size == 0 or t.size == 0:
        return Difference(
            metric,
            float(np.median(c)) if c.size else None,
            float(np.median(t)) if t.size else None,
            None,
            None,
            None,
            None,
            "none",
            True,
        )
    mc, mt = float(np.median(c)), float(np.median(t))

    def stat(ts: NDArray[np.float64], cs: NDArray[np.float64], axis: int = -1) -> Any:
        return np.median(ts, axis=axis) - np.median(cs, axis=axis)

    low, high = _bootstrap((t, c), stat, paired=False, alpha=alpha, seed=seed)
    p: float | None
    if np.all(c == c[0]) and np.all(t == c[0]):
        p = 1.0
    else:
        p = _float(stats.mannwhitneyu(t, c, alternative="two-sided").pvalue)
    return Difference(
        metric, mc, mt, mt - mc, low, high, p, "Mann-Whitney U, bootstrap interval", True
    )


def paired_binary(
    metric: str,
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
    seed: int = 0,
) -> Difference:
    """Paired 0/1 outcomes: McNemar's test, paired-bootstrap interval of the difference."""
    from statsmodels.stats.contingency_tables import mcnemar

    c = np.asarray(control, dtype=bool)
    t = np.asarray(treatment, dtype=bool)
    if c.shape != t.shape or c.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {c.shape} and {t.shape}")
    if c.size == 0:
        return Difference(metric, None, None, None, None, None, None, "none", lower_is_better)
    only_c = int(np.sum(c & ~t))
    only_t = int(np.sum(t & ~c))
    both = int(np.sum(c & t))
    neither = int(np.sum(~c & ~t))
    discordant = only_c + only_t
    if discordant == 0:
        p: float | None = 1.0
        test = "McNemar (no discordant pairs)"
    else:
        exact = discordant < 25
        result = mcnemar([[both, only_c], [only_t, neither]], exact=exact, correction=True)
        p = _float(result.pvalue)
        test = "McNemar exact binomial" if exact else "McNemar chi-square (continuity-corrected)"
    cf, tf = c.astype(np.float64), t.astype(np.float64)

    def stat(ts: NDArray[np.float64], cs: NDArray[np.float64], axis: int = -1) -> Any:
        return np.mean(ts, axis=axis) - np.mean(cs, axis=axis)

    diff = float(tf.mean() - cf.mean())
    low: float | None
    high: float | None
    if discordant == 0:
        low, high = diff, diff
    else:
        low, high = _bootstrap((tf, cf), stat, paired=True, alpha=alpha, seed=seed)
    return Difference(
        metric,
        float(cf.mean()),
        float(tf.mean()),
        diff,
        low,
        high,
        p,
        test + ", paired-bootstrap interval",
        lower_is_better,
    )


def paired_continuous(
    metric: str,
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
    seed: int = 0,
) -> Difference:
    """Paired numbers: difference of means (paired bootstrap), Wilcoxon signed-rank test."""
    from scipy import stats

    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    if c.shape != t.shape or c.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {c.shape} and {t.shape}")
    if c.size == 0:
        return Difference(metric, None, None, None, None, None, None, "none", lower_is_better)
    d = t - c
    diff = float(d.mean())
    low: float | None
    high: float | None
    if np.all(d == 0):
        p: float | None = 1.0
        low, high = diff, diff
    else:
        p = _float(stats.wilcoxon(t, c, zero_method="zsplit").pvalue)

        def stat(ts: NDArray[np.float64], cs: NDArray[np.float64], axis: int = -1) -> Any:
            return np.mean(ts, axis=axis) - np.mean(cs, axis=axis)

        low, high = _bootstrap((t, c), stat, paired=True, alpha=alpha, seed=seed)
    return Difference(
        metric,
        float(c.mean()),
        float(t.mean()),
        diff,
        low,
        high,
        p,
        "Wilcoxon signed-rank, paired-bootstrap interval",
        lower_is_better,
    )


def holm_adjust(differences: Sequence[Difference]) -> list[Difference]:
    """The same differences with Holm-adjusted p-values over all testable ones."""
    from dataclasses import replace

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


def requests_to_detect(
    base_rate: float, delta: float, *, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Requests per arm for a two-sided test to detect ``base_rate`` -> ``base_rate + delta``.

    Uses Cohen's h and the normal approximation (statsmodels ``NormalIndPower``).
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    base = min(max(base_rate, 1e-6), 1 - 1e-6)
    target = base + delta if base + delta < 1 else base - delta
    target = min(max(target, 1e-6), 1 - 1e-6)
    effect = abs(float(proportion_effectsize(target, base)))
    if effect == 0:
        return None
    n = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    return math.ceil(float(n))
