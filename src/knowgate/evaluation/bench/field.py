"""knowgate against the field: an AdaRAGUE-style table on the questions every method has.

A user choosing a gate compares it with what the field offers, at the same cost. Every method -
knowgate's fused policies and probes, the field's gates (TARG, FLARE, sampling consistency,
self-routing), the question-only baseline (Marina et al. 2025) and the plain baselines - is
scored here on the same questions (the peers branch's sample), from its held-out decisions at
the benchmark's operating rule (each cut chosen on the method's own training folds), in the
format of AdaRAGUE (Moskvoretskii et al., ACL 2025): In-Accuracy, retrieval calls per question
(RC), LM calls per question (LMC), AUROC pooled, within PopQA relation and within dataset,
skip recall and precision, and the wall time each method costs as measured in this run.

Each compared knowgate policy is then set against each peer with paired bootstrap intervals:
the AUROC difference, and the mean accuracy difference between their accuracy-vs-retrieval-rate
curves (accuracy at equal retrieval rate, averaged over rates; also over rates >= 0.8).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from knowgate.evaluation.bench.curves import (
    accuracy_curve,
    bootstrap_mean_difference,
    compare_curves,
    random_curve,
    rate_grid,
)
from knowgate.evaluation.bench.policies import (
    HEADLINE,
    PROBE,
    PROBE_FUSED,
    QUESTION_ONLY,
    HeldOutPolicy,
    HeldOutSet,
)
from knowgate.evaluation.bench.policy_results import skip_quality
from knowgate.evaluation.bench.summary import FieldComparison, FieldRow, Versus
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import policy_outcome
from knowgate.evaluation.metrics import auroc, bootstrap_ci, stratified_auroc
from knowgate.evaluation.reporting import Interval, mean_interval

KNOWGATE_FAMILIES = ("fused", "probe")
COMPARED = (
    HEADLINE,
    "uncertainty (prefill)",
    PROBE,
    PROBE_FUSED,
    "uncertainty+sparsity (prefill+draft)",
)
"""The knowgate policies set against every peer (pre-declared, not picked on the results)."""
HIGH_RATES = 0.8


def group_of(policy: HeldOutPolicy) -> str | None:
    """``knowgate``, ``peer``, ``baseline``, or ``None`` for policies not in the table."""
    if policy.name == QUESTION_ONLY or policy.family == "peer":
        return "peer"
    if policy.family in KNOWGATE_FAMILIES:
        return "knowgate"
    if policy.family in ("baseline", "oracle"):
        return "baseline"
    return None


def common_rows(table: BenchTable, held: HeldOutSet) -> NDArray[np.bool_]:
    """Questions every knowgate policy, peer and baseline of the table is defined on."""
    rows = np.ones(table.n, dtype=bool)
    for policy in held.policies.values():
        if group_of(policy) is not None:
            rows &= policy.rows
    return rows


def _interval(ci: object) -> Interval:
    return Interval.of(ci.estimate, ci.low, ci.high)  # type: ignore[attr-defined]


def _within(
    y: NDArray[np.int64], s: NDArray[np.float64], groups: NDArray[np.str_], n_boot: int, seed: int
) -> Interval | None:
    if not groups.size:
        return None

    def statistic(yy: NDArray[np.int64], ss: NDArray[np.float64], gg: NDArray[np.str_]) -> float:
        return stratified_auroc(yy, ss, gg).auroc

    if not n_boot:
        return Interval.of(statistic(y, s, groups))
    return _interval(bootstrap_ci(statistic, y, s, groups, n_resamples=n_boot, seed=seed))


def _verdict(interval: Interval) -> str:
    if interval.low is None or interval.high is None:
        return "not tested"
    if interval.low > 0:
        return "above"
    if interval.high < 0:
        return "below"
    return "matches"


def field_comparison(
    table: BenchTable,
    held: HeldOutSet,
    decisions: Mapping[str, NDArray[np.bool_]],
    *,
    operating_rule: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[FieldComparison | None, dict[str, NDArray[np.float64]]]:
    """The AdaRAGUE-style table and the knowgate-versus-peer comparisons.

    Args:
        table: both branches.
        held: every policy's held-out predictions.
        decisions: every policy's held-out decisions at ``operating_rule``.
        operating_rule: the rule the cuts were chosen by.
        n_boot: bootstrap resamples (the within-group AUROCs and curve differences use at most
            500 and 300).
        seed: bootstrap seed.

    Returns:
        ``(the comparison, or None without any peer, curves on the common questions)``.
    """
    in_table = {n: p for n, p in held.policies.items() if group_of(p) is not None}
    if not any(group_of(p) == "peer" for p in in_table.values()):
        return None, {}
    rows = common_rows(table, held)
    not_in_table = {
        n: "defined on PopQA rows only (page views)" if p.family == "popularity" else "not a method"
        for n, p in held.policies.items()
        if n not in in_table and p.family != "single"
    }
    lab = table.labelled
    y = lab.y[rows]
    branches = table.branches.subset(rows)
    cb, rag = branches.closed_book_correct, branches.retrieval_correct
    always_seconds = policy_outcome(branches, np.ones(y.size), stage="none").mean_seconds
    relations = lab.relations[rows]
    rel = relations != ""
    datasets = lab.datasets[rows]
    out: dict[str, FieldRow] = {}
    scores: dict[str, NDArray[np.float64]] = {}
    for name, policy in in_table.items():
        extra = policy.extra_seconds
        extra_rows = extra[rows] if isinstance(extra, np.ndarray) else np.full(y.size, extra)
        outcome = policy_outcome(
            branches,
            decisions[name][rows],
            stage=policy.stage,
            extra_lm_calls=policy.extra_lm_calls,
            extra_seconds=extra_rows,
        )
        recall, precision = skip_quality(1.0 - outcome.retrieved, cb)
        ranked = policy.score is not None and policy.family != "oracle"
        s = policy.score[rows] if policy.score is not None else np.zeros(y.size)
        if ranked:
            scores[name] = s
        out[name] = FieldRow(
            method=name,
            group=str(group_of(policy)),
            stage=policy.stage,
            n=int(rows.sum()),
            accuracy=mean_interval(outcome.correct, n_boot, seed),
            retrieval_calls=outcome.retrieval_rate,
            lm_calls=outcome.lm_calls_per_question,
            auroc=None
            if not ranked
            else (
                _interval(bootstrap_ci(auroc, y, s, n_resamples=n_boot, seed=seed))
                if n_boot
                else Interval.of(auroc(y, s))
            ),
            auroc_within_relation=None
            if not ranked or not rel.any()
            else _within(y[rel], s[rel], relations[rel], min(n_boot, 500), seed),
            auroc_within_dataset=None
            if not ranked
            else _within(y, s, datasets, min(n_boot, 500), seed),
            skip_recall=recall,
            skip_precision=precision,
            mean_seconds=outcome.mean_seconds,
            extra_seconds=float(np.mean(extra_rows)),
            seconds_minus_always=outcome.mean_seconds - always_seconds,
            choices_per_fold=policy.choices,
        )

    knowgate = [n for n in COMPARED if n in scores and out[n].group == "knowgate"]
    peers = [n for n, r in out.items() if r.group == "peer" and n in scores]
    versus = []
    curve_boot = min(n_boot, 300)

    def difference(a: NDArray[np.float64], b: NDArray[np.float64], low: float) -> Interval:
        est, lo, hi = bootstrap_mean_difference(
            a, b, cb, rag, low=low, n_boot=curve_boot, seed=seed
        )
        return Interval.of(est, lo, hi) if curve_boot else Interval.of(est)

    def auroc_gap(yy: NDArray[np.int64], a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
        return auroc(yy, a) - auroc(yy, b)

    for k in knowgate:
        for p in peers:
            gap = (
                _interval(
                    bootstrap_ci(auroc_gap, y, scores[k], scores[p], n_resamples=n_boot, seed=seed)
                )
                if n_boot
                else Interval.of(auroc_gap(y, scores[k], scores[p]))
            )
            curve = difference(scores[k], scores[p], 0.0)
            versus.append(
                Versus(
                    knowgate=k,
                    peer=p,
                    auroc_difference=gap,
                    curve_difference=curve,
                    curve_difference_high_rates=difference(scores[k], scores[p], HIGH_RATES),
                    auroc_verdict=_verdict(gap),
                    accuracy_verdict=_verdict(curve),
                )
            )
    grid = rate_grid()
    curves = {"random": random_curve(cb, rag, grid)}
    for name, s in scores.items():
        curves[name] = accuracy_curve(s, cb, rag, grid=grid, seed=seed)
    if "oracle" in in_table:
        curves["oracle"] = accuracy_curve(y.astype(np.float64), cb, rag, grid=grid, seed=seed)
    above = {
        k: compare_curves(curves[k], curves["random"], grid=grid).share_above == 1.0
        for k in scores
        if out[k].group == "knowgate"
    }
    single_pass = [
        n
        for n, r in out.items()
        if r.group == "knowgate" and n in scores and in_table[n].extra_lm_calls == 0
    ]
    best = max(single_pass, key=lambda n: out[n].auroc.estimate or 0.0, default=None)  # type: ignore[union-attr]
    comparison = FieldComparison(
        n=int(rows.sum()),
        datasets={str(d): int(np.sum(datasets == d)) for d in dict.fromkeys(datasets.tolist())},
        operating_rule=operating_rule,
        rows=out,
        versus=tuple(versus),
        best_single_pass=best,
        above_random_at_every_rate=above,
        not_in_table=not_in_table,
    )
    return comparison, curves
