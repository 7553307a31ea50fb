"""The plain-sentence verdict of a report or replay: which arm wins, or that the data cannot tell.

Rules, per treatment arm against the control (a difference is significant when its
Holm-adjusted p-value is below alpha):

1. Accuracy differs significantly: the more accurate arm wins; cost differences are stated.
2. Accuracy does not differ, its (unadjusted) confidence interval lies within +-margin, and the
   significant cost differences (retrieval rate, latency or wall time) all favour one arm: that
   arm wins on cost - a non-inferiority reading, so "no detectable difference" is never read as
   "equal" unless the interval is narrow enough to say so.
3. The interval lies within +-margin and no cost differs: the arms are equivalent.
4. Otherwise the data cannot tell yet; the sentence gives the interval, says when only Holm's
   adjustment keeps a difference from counting, and how many units per arm (questions, when
   paired) would detect a difference of ``margin`` - from the per-unit variance the data show,
   so the design effect of many requests per unit is included.

Without outcomes there is no accuracy, so no arm is declared the winner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from knowgate.experiments.statistics import Difference, units_to_detect

COST_METRICS = ("retrieval_rate", "latency_mean_ms", "latency_p50_ms", "wall_time_s")
SRM_ALPHA = 0.001  # sample-ratio-mismatch alarm level (the check: Fabijan et al., KDD 2019)
POWER = 0.8


def format_p(p: float | None) -> str:
    """``p=0.034`` / ``p<0.001`` / ``p=n/a``."""
    if p is None:
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _p(d: Difference) -> str:
    """The raw p-value, and the Holm-adjusted one where the adjustment changed it."""
    if d.p_adjusted is not None and format_p(d.p_adjusted) != format_p(d.p_value):
        return f"{format_p(d.p_value)}, Holm-adjusted {format_p(d.p_adjusted)}"
    return format_p(d.p_value)


def _pp(x: float) -> str:
    return f"{abs(x) * 100:.1f} pp"


def _cost_phrase(d: Difference, arm: str, control: str) -> str:
    assert d.diff is not None and d.control is not None and d.treatment is not None
    if d.metric == "retrieval_rate":
        way = "less" if d.diff < 0 else "more"
        return (
            f"{arm} retrieves {_pp(d.diff)} {way} often than {control} "
            f"({d.treatment:.1%} vs {d.control:.1%}, {_p(d)})"
        )
    if d.metric in ("latency_p50_ms", "latency_mean_ms"):
        way = "lower" if d.diff < 0 else "higher"
        kind = "median" if d.metric == "latency_p50_ms" else "mean"
        return (
            f"{arm}'s {kind} latency is {abs(d.diff):.0f} ms {way} "
            f"({d.treatment:.0f} vs {d.control:.0f} ms, {_p(d)})"
        )
    way = "less" if d.diff < 0 else "more"
    return (
        f"{arm} takes {abs(d.diff) * 1000:.0f} ms {way} per question "
        f"({d.treatment * 1000:.0f} vs {d.control * 1000:.0f} ms, {_p(d)})"
    )


def _interval(d: Difference, alpha: float) -> str:
    if d.low is None or d.high is None:
        return "no interval"
    return f"{1 - alpha:.0%} CI {d.low * 100:+.1f} to {d.high * 100:+.1f} pp"


def _sample_size(d: Difference, margin: float, alpha: float) -> str:
    """``; about N units per arm ... would detect ...`` (empty when not computable)."""
    need = units_to_detect(d, margin, alpha=alpha, power=POWER)
    if need is None or d.units is None or d.requests is None:
        return ""
    goal = f"would detect a {margin * 100:.0f} pp accuracy difference with {POWER:.0%} power"
    if d.paired:
        return f"; about {need:,} questions {goal}"
    per_unit = sum(d.requests) / sum(d.units)
    design = ""
    if d.design_effect is not None:
        design = f"; design effect {d.design_effect:.2f}"
        if d.design_effect < 0.995:  # shown below 1.00: the interval used the independent one
            design += ", counted as 1"
    return (
        f"; about {need:,} units per arm (about {round(need * per_unit):,} requests at "
        f"{per_unit:.1f} requests per unit{design}) {goal}"
    )


def arm_verdict(
    control: str,
    arm: str,
    differences: Sequence[Difference],
    *,
    alpha: float,
    margin: float,
) -> str:
    """One sentence for ``arm`` against ``control`` (see the module docstring)."""
    by = {d.metric: d for d in differences}
    acc = by.get("accuracy")
    costs = [by[m] for m in COST_METRICS if m in by and by[m].diff is not None]
    sig_costs = [c for c in costs if c.significant(alpha)]
    cost_text = "; ".join(_cost_phrase(c, arm, control) for c in sig_costs)
    if acc is None or acc.p_value is None or acc.diff is None:
        why = (
            "no outcomes recorded"
            if acc is None or acc.diff is None
            else "fewer than two units with outcomes in an arm"
        )
        text = f"{arm} vs {control}: {why}, so accuracy cannot be compared yet"
        text += f"; {cost_text}" if sig_costs else "; the data cannot tell their costs apart"
        return text + ". Record outcomes (`knowgate ab feedback`) before choosing."
    assert acc.control is not None and acc.treatment is not None
    if acc.significant(alpha):
        winner, loser = (arm, control) if acc.diff > 0 else (control, arm)
        hi, lo = max(acc.treatment, acc.control), min(acc.treatment, acc.control)
        text = (
            f"{winner} wins on accuracy over {loser}: {hi:.1%} vs {lo:.1%} "
            f"({_pp(acc.diff)} higher, {_interval(acc, alpha)} for {arm} - {control}, {_p(acc)})"
        )
        return text + (f"; {cost_text}." if sig_costs else "; costs do not differ detectably.")
    within = (
        acc.low is not None and acc.high is not None and acc.low >= -margin and acc.high <= margin
    )
    directions = {c.diff < 0 for c in sig_costs if c.diff is not None}
    if within and sig_costs and len(directions) == 1:
        cheaper, other = (arm, control) if directions == {True} else (control, arm)
        return (
            f"{cheaper} wins on cost: {cost_text}, with accuracy within ±{margin * 100:.0f} pp "
            f"of {other} ({acc.treatment:.1%} vs {acc.control:.1%}, {_interval(acc, alpha)})."
        )
    if within and not sig_costs:
        return (
            f"{arm} and {control} are equivalent: accuracy within ±{margin * 100:.0f} pp "
            f"({_interval(acc, alpha)}) and no detectable cost difference."
        )
    holm_only = acc.p_value < alpha  # significant alone, not after Holm's adjustment
    text = (
        f"The data cannot tell yet whether {arm} or {control} is more accurate: "
        f"{acc.treatment:.1%} vs {acc.control:.1%} ({_interval(acc, alpha)}, {_p(acc)}"
        + (": a difference on its own, but not after Holm's adjustment" if holm_only else "")
        + ")"
    )
    if sig_costs:
        text += f"; {cost_text}"
    return text + _sample_size(acc, margin, alpha) + "."


def verdict(
    control: str,
    comparisons: Mapping[str, Sequence[Difference]],
    *,
    alpha: float,
    margin: float,
    srm_p_value: float | None = None,
) -> str:
    """The whole verdict: an SRM warning if needed, then one sentence per treatment arm."""
    sentences = []
    if srm_p_value is not None and srm_p_value < SRM_ALPHA:
        sentences.append(
            f"Warning: sample ratio mismatch ({format_p(srm_p_value)}): the arms' unit counts "
            "do not match their weights, so assignment or logging is broken and the "
            "comparisons below may be biased."
        )
    for arm, diffs in comparisons.items():
        sentences.append(arm_verdict(control, arm, diffs, alpha=alpha, margin=margin))
    return " ".join(sentences)
