"""Plain-text tables for reports and replays (monospace, no colour: they go into logs and docs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from knowgate.experiments.statistics import Difference, Estimate
from knowgate.experiments.verdict import format_p

Unit = Literal["rate", "ms", "s", "number"]


def _formatters(unit: Unit) -> tuple[Callable[[float], str], Callable[[float], str]]:
    """(value, difference) formatters for a unit."""
    if unit == "rate":
        return (lambda x: f"{x:.1%}"), (lambda x: f"{x * 100:+.1f} pp")
    if unit == "ms":
        return (lambda x: f"{x:.0f} ms"), (lambda x: f"{x:+.0f} ms")
    if unit == "s":
        return (lambda x: f"{x * 1000:.0f} ms"), (lambda x: f"{x * 1000:+.0f} ms")
    return (lambda x: f"{x:.3f}"), (lambda x: f"{x:+.3f}")


_METRIC_UNITS: dict[str, Unit] = {
    "retrieval_rate": "rate",
    "accuracy": "rate",
    "latency_mean_ms": "ms",
    "latency_p50_ms": "ms",
    "wall_time_s": "s",
}


def interval_text(e: Estimate | None, unit: Unit) -> str:
    """``value [low, high]`` (or ``-`` when there is no value)."""
    if e is None or e.value is None:
        return "-"
    fmt, _ = _formatters(unit)
    text = fmt(e.value).removesuffix(" ms")
    if e.low is None or e.high is None:
        return text
    low, high = fmt(e.low).removesuffix(" ms"), fmt(e.high).removesuffix(" ms")
    return f"{text} [{low}, {high}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces, with a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def format_difference(d: Difference, *, design_effect: bool = True) -> list[str]:
    """``[metric, control, treatment, difference [CI], (deff,) p, Holm-adjusted p]`` cells."""
    value, diff = _formatters(_METRIC_UNITS.get(d.metric, "number"))

    def show(x: float | None, fmt: Callable[[float], str]) -> str:
        return "-" if x is None else fmt(x)

    interval = "" if d.low is None or d.high is None else f" [{diff(d.low)}, {diff(d.high)}]"
    deff = [show(d.design_effect, lambda x: f"{x:.2f}")] if design_effect else []
    return [
        d.metric,
        show(d.control, value),
        show(d.treatment, value),
        show(d.diff, diff) + interval,
        *deff,
        format_p(d.p_value),
        format_p(d.p_adjusted if d.p_adjusted is not None else d.p_value),
    ]
