"""What the calibration study and the benchmark reports share: intervals, JSON, Markdown cells.

Both reports are rendered from typed summaries (frozen dataclasses); :func:`to_jsonable` turns
one into the JSON written beside the Markdown, with non-finite numbers as ``null``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from knowgate.evaluation.metrics import bootstrap_ci


def finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not finite."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval (bounds ``None`` when not computed).

    Attributes:
        estimate: the point estimate (``None`` when undefined, e.g. a ratio over no rows).
        low: lower bound.
        high: upper bound.
    """

    estimate: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(
        cls, estimate: float | None, low: float | None = None, high: float | None = None
    ) -> Interval:
        """An interval with non-finite values replaced by ``None``."""
        return cls(finite(estimate), finite(low), finite(high))

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies inside the bounds (``None`` without bounds)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high


def mean_interval(values: ArrayLike, n_boot: int, seed: int, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval (``n_boot = 0``: no interval)."""
    v = np.asarray(values, dtype=np.float64)
    if not n_boot:
        return Interval.of(float(v.mean()))
    ci = bootstrap_ci(np.mean, v, n_resamples=n_boot, seed=seed, confidence=confidence)
    return Interval.of(ci.estimate, ci.low, ci.high)


def to_jsonable(value: Any, digits: int = 6) -> Any:
    """Dataclasses, mappings, sequences and numpy scalars as plain JSON values.

    Floats are rounded to ``digits`` decimals; NaN and infinities become ``None``.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name), digits) for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = finite(float(value))
        return None if v is None else round(v, digits)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Sequence | np.ndarray):
        return [to_jsonable(v, digits) for v in value]
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ------------------------------------------------------------------------------ Markdown cells
def fmt(value: Any, digits: int = 3) -> str:
    """One table cell: ``-`` for missing, yes/NO for booleans, fixed digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, Interval):
        return fmt_interval(value, digits)
    return str(value)


def fmt_interval(interval: Interval | None, digits: int = 3, *, signed: bool = False) -> str:
    """``estimate [low, high]`` (or the estimate alone when there are no bounds)."""
    if interval is None or interval.estimate is None:
        return "-"
    pattern = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = pattern.format(interval.estimate)
    if interval.low is not None and interval.high is not None:
        text += f" [{pattern.format(interval.low)}, {pattern.format(interval.high)}]"
    return text


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table; cells through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)
