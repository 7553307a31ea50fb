"""Operating points: how the cut on a policy's score is chosen from labelled calibration data.

Every policy scores a request (higher = more likely known) and retrieves when the score is below
its threshold. The four operating points:

- ``probability:P`` - retrieve when calibrated p(known) < P. Needs a probabilistic policy.
- ``budget:R`` - retrieve for at most a share R of traffic: the threshold is the score quantile
  of the calibration distribution, so exactly ``floor(R * n)`` calibration questions (fewer on
  ties) fall below it. The share on new traffic matches R only as far as traffic resembles the
  calibration data.
- ``accuracy:A[:DELTA]`` - the lowest threshold whose answered-without-retrieval questions have
  accuracy >= A **with probability >= 1 - DELTA** (default 0.05). Selection with guaranteed risk
  (SGR; Geifman & El-Yaniv 2017, "Selective Classification for Deep Neural Networks"): binary
  search over the sorted calibration scores, each candidate tested with the exact
  (Clopper-Pearson) binomial upper bound on its error rate at level DELTA / ceil(log2 n). The
  promise: if future questions are exchangeable with the calibration questions, and the
  calibration questions were not used to fit the scores, then with probability >= 1 - DELTA over
  the calibration sample, the accuracy on questions answered without retrieval is >= A. When no
  threshold qualifies the policy retrieves always (the promise then holds vacuously).
- ``cost:C_RETRIEVE:C_WRONG`` - minimise expected cost, where each retrieval costs C_RETRIEVE and
  each wrong closed-book answer C_WRONG. With calibrated p(known) the Bayes rule is: skip when
  (1 - p) C_WRONG < C_RETRIEVE, i.e. threshold 1 - C_RETRIEVE / C_WRONG (the retrieval branch's
  own errors are not modelled). For raw scores the empirical cost on calibration data is minimised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, TypeAdapter, ValidationError
from scipy.stats import beta

from knowgate.errors import ConfigError, PolicyError
from knowgate.schema import StrictModel


class FixedProbability(StrictModel):
    """Retrieve when calibrated p(known) is below ``threshold``."""

    kind: Literal["probability"] = "probability"
    threshold: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class RetrievalBudget(StrictModel):
    """Retrieve for at most ``max_retrieval_rate`` of the calibration traffic."""

    kind: Literal["budget"] = "budget"
    max_retrieval_rate: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class TargetAccuracy(StrictModel):
    """Accuracy >= ``target`` on questions answered without retrieval, w.p. >= 1 - ``delta``."""

    kind: Literal["accuracy"] = "accuracy"
    target: float = Field(gt=0.0, lt=1.0, allow_inf_nan=False)
    delta: float = Field(default=0.05, gt=0.0, lt=1.0, allow_inf_nan=False)


class ExpectedCost(StrictModel):
    """Minimise ``retrieval_cost`` per retrieval + ``wrong_answer_cost`` per wrong skip."""

    kind: Literal["cost"] = "cost"
    retrieval_cost: float = Field(gt=0.0, allow_inf_nan=False)
    wrong_answer_cost: float = Field(gt=0.0, allow_inf_nan=False)


OperatingPoint = Annotated[
    FixedProbability | RetrievalBudget | TargetAccuracy | ExpectedCost,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(OperatingPoint)
_SHAPES: dict[str, tuple[tuple[str, ...], int]] = {  # kind -> (argument names, required count)
    "probability": (("threshold",), 1),
    "budget": (("max_retrieval_rate",), 1),
    "accuracy": (("target", "delta"), 1),
    "cost": (("retrieval_cost", "wrong_answer_cost"), 2),
}


def parse_operating_point(value: str | Mapping[str, Any] | OperatingPoint) -> OperatingPoint:
    """An operating point from any of its three forms, validated.

    Args:
        value: the CLI form (``probability:0.5``, ``budget:0.3``, ``accuracy:0.9[:0.05]``,
            ``cost:1:10``), the stored form (``{"kind": "budget", "max_retrieval_rate": 0.3}``,
            as in policy artifacts and configs), or an operating point (returned as is).

    Raises:
        ConfigError: an unknown kind, missing or non-numeric arguments, or values out of range.
    """
    if isinstance(value, FixedProbability | RetrievalBudget | TargetAccuracy | ExpectedCost):
        return value
    if isinstance(value, str):
        value = _text_form(value)
    try:
        return _ADAPTER.validate_python(value)  # type: ignore[no-any-return,unused-ignore]
    except ValidationError as exc:
        raise ConfigError(f"invalid operating point {value!r}: {exc.errors()[0]['msg']}") from exc


def _text_form(text: str) -> dict[str, Any]:
    """The mapping a CLI-form operating point stands for."""
    kind, _, rest = text.strip().partition(":")
    args = [a for a in rest.split(":") if a] if rest else []
    try:
        nums = [float(a) for a in args]
    except ValueError as exc:
        raise ConfigError(f"operating point {text!r}: arguments must be numbers") from exc
    if kind not in _SHAPES:
        raise ConfigError(
            f"unknown operating point {kind!r} in {text!r}; use probability:P, budget:R, "
            "accuracy:A[:DELTA] or cost:C_RETRIEVE:C_WRONG"
        )
    names, required = _SHAPES[kind]
    if not required <= len(nums) <= len(names):
        raise ConfigError(f"operating point {text!r}: {kind} takes {':'.join(names)}")
    return {"kind": kind, **dict(zip(names, nums, strict=False))}


def format_operating_point(op: OperatingPoint) -> str:
    """The CLI form of ``op`` (inverse of :func:`parse_operating_point`)."""
    if isinstance(op, FixedProbability):
        return f"probability:{op.threshold:g}"
    if isinstance(op, RetrievalBudget):
        return f"budget:{op.max_retrieval_rate:g}"
    if isinstance(op, TargetAccuracy):
        return f"accuracy:{op.target:g}:{op.delta:g}"
    return f"cost:{op.retrieval_cost:g}:{op.wrong_answer_cost:g}"


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold and what it does on the calibration data.

    Attributes:
        threshold: retrieve when score < threshold.
        retrieval_rate: share of calibration questions below the threshold.
        accuracy_without_retrieval: accuracy of the calibration questions at or above it
            (``None`` when there are none or no labels were given).
        details: operating-point specific facts (e.g. the accuracy bound for ``accuracy``).
    """

    threshold: float
    retrieval_rate: float
    accuracy_without_retrieval: float | None
    details: dict[str, Any] = field(default_factory=dict)


def _as_arrays(
    scores: ArrayLike, labels: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.int64] | None]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise PolicyError("cannot choose a threshold from zero calibration scores")
    if not np.all(np.isfinite(s)):
        raise PolicyError("calibration scores contain NaN or inf")
    if labels is None:
        return s, None
    y = np.asarray(labels).ravel()
    if y.shape != s.shape:
        raise PolicyError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isin(y, (0, 1))):
        raise PolicyError("labels must be 0/1 (1 = closed-book answer correct)")
    return s, y.astype(np.int64)


def _choice(
    threshold: float, s: NDArray[np.float64], y: NDArray[np.int64] | None, **details: Any
) -> ThresholdChoice:
    keep = s >= threshold
    acc = float(y[keep].mean()) if y is not None and keep.any() else None
    return ThresholdChoice(float(threshold), float(1.0 - keep.mean()), acc, details)


def above_all(s: NDArray[np.float64]) -> float:
    """A threshold just above every score (retrieve for all of them)."""
    return float(np.nextafter(s.max(), np.inf))


def budget_threshold(scores: NDArray[np.float64], rate: float) -> float:
    """The threshold that puts exactly ``floor(rate * n)`` scores below it (fewer on ties)."""
    s = np.sort(scores)
    k = math.floor(rate * s.size + 1e-9)
    if k >= s.size:
        return above_all(s)
    return float(s[k])


def _clopper_pearson_upper(errors: int, n: int, level: float) -> float:
    """One-sided exact upper confidence bound on a binomial error rate."""
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - level, errors + 1, n - errors))


def sgr_threshold(
    scores: NDArray[np.float64], labels: NDArray[np.int64], target: float, delta: float
) -> tuple[float | None, dict[str, Any]]:
    """Selection with guaranteed risk (Geifman & El-Yaniv 2017): binary search, exact bound.

    Returns:
        ``(threshold or None when nothing qualifies, details)``.
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    n = s.size
    risk = 1.0 - target
    steps = max(1, math.ceil(math.log2(n)))
    level = delta / steps
    lo, hi = 0, n - 1  # candidate cut indices: accept s >= s[z]
    best: tuple[float, float, int] | None = None
    for _ in range(steps):
        z = math.ceil((lo + hi) / 2)
        cut = s[z]
        accepted = s >= cut
        m = int(accepted.sum())
        errors = int(m - y[accepted].sum())
        bound = _clopper_pearson_upper(errors, m, level)
        if bound < risk:
            best = (float(cut), bound, m)
            hi = z  # try accepting more
        else:
            lo = z
        if hi - lo <= 0:
            break
    details: dict[str, Any] = {"delta": delta, "tests": steps, "level_per_test": level}
    if best is None:
        details["note"] = "no threshold meets the target at this confidence; retrieve always"
        return None, details
    details["accuracy_lower_bound"] = 1.0 - best[1]
    details["n_accepted"] = best[2]
    return best[0], details


def choose_threshold(
    op: OperatingPoint,
    scores: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    probabilistic: bool,
) -> ThresholdChoice:
    """Apply an operating point to calibration scores (and labels, where it needs them).

    Args:
        op: the operating point.
        scores: calibration scores, higher = more likely known (calibrated p(known) when
            ``probabilistic``).
        labels: 1 when the closed-book answer was correct; needed by ``accuracy`` and by
            ``cost`` on non-probabilistic scores.
        probabilistic: the scores are calibrated probabilities.

    Raises:
        PolicyError: the operating point does not apply to these scores, or labels are missing.
    """
    s, y = _as_arrays(scores, labels)
    if isinstance(op, FixedProbability):
        if not probabilistic:
            raise PolicyError(
                "a fixed-probability operating point needs a probabilistic policy (fused); "
                "for a raw-feature threshold set its value directly or use budget/accuracy/cost"
            )
        return _choice(op.threshold, s, y)
    if isinstance(op, RetrievalBudget):
        return _choice(budget_threshold(s, op.max_retrieval_rate), s, y)
    if y is None:
        raise PolicyError(f"the {op.kind} operating point needs calibration labels")
    if isinstance(op, TargetAccuracy):
        cut, details = sgr_threshold(s, y, op.target, op.delta)
        if cut is None and not probabilistic:
            raise PolicyError(
                f"no threshold reaches accuracy {op.target} with confidence {1 - op.delta} on "
                f"these {s.size} calibration questions; use the 'always' policy"
            )
        if cut is None:  # a probability threshold of 1 means "retrieve always" (FusedPolicy)
            return ThresholdChoice(1.0, 1.0, None, details)
        return _choice(cut, s, y, **details)
    if probabilistic:
        cut = min(1.0, max(0.0, 1.0 - op.retrieval_cost / op.wrong_answer_cost))
        choice = _choice(cut, s, y)
    else:
        candidates = np.unique(np.append(s, above_all(s)))
        wrong_above = np.array([np.sum((s >= c) & (y == 0)) for c in candidates])
        retrieved = np.array([np.sum(s < c) for c in candidates])
        costs = op.retrieval_cost * retrieved + op.wrong_answer_cost * wrong_above
        choice = _choice(float(candidates[int(np.argmin(costs))]), s, y)
    keep = s >= choice.threshold
    cost = op.retrieval_cost * float((~keep).sum()) + op.wrong_answer_cost * float(
        (keep & (y == 0)).sum()
    )
    choice.details["mean_cost_on_calibration"] = cost / s.size
    return choice
