"""The benchmark: both branches per question (cached), every policy scored by cross-fitting.

:func:`run_benchmark` answers each question closed-book (the cache ``knowgate calibrate``
fills) and with retrieval through the router (its own cache), writes the both-branch replay
cache, cross-fits every policy, applies each one's operating point chosen on training folds
only, and returns the numbers that :mod:`knowgate.evaluation.bench.report` writes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError
from knowgate.evaluation.bench.both_branches import BenchTable, build_bench_table
from knowgate.evaluation.bench.curves import (
    accuracy_curve,
    bootstrap_mean_difference,
    compare_curves,
    random_curve,
    rate_grid,
)
from knowgate.evaluation.bench.decode_timing import DEFAULT_SAMPLE, time_closed_book_decode
from knowgate.evaluation.bench.held_out import (
    HEADLINE,
    POPULARITY,
    HeldOutSet,
    held_out_policies,
)
from knowgate.evaluation.bench.operating_rules import DEFAULT_RULE, RULES, fit_break_even
from knowgate.evaluation.bench.policy_metrics import (
    evaluate_decisions,
    outcomes,
    per_group,
    random_at_rate,
    summarize_branches,
)
from knowgate.evaluation.bench.popularity_analysis import (
    breakdowns,
    popqa_rows,
    sparsity_popularity_correlations,
)
from knowgate.evaluation.bench.retrieval_branch import run_retrieval_branch
from knowgate.evaluation.bench.sampling import ids_digest
from knowgate.evaluation.closed_book import run_closed_book
from knowgate.evaluation.datasets import QADataset

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

log = logging.getLogger(__name__)

QUESTION_ONLY = "question-only"
ACCURACY_TOLERANCE = 0.01
HIGH_RATES = 0.8
"""Curves are also compared on retrieval rates >= 0.8 only: where the oracle of a small model
sits (it retrieves for the 88-96% of questions the model cannot answer), and where a gate that
retrieves "only when the model does not know" operates. Below it, a curve mostly measures which
questions retrieval helps most - not what the model knows."""
SAVINGS_TARGET = 0.5


@dataclass
class BenchmarkResult:
    """The benchmark's numbers and the arrays behind its plots.

    Attributes:
        summary: everything ``results.json`` holds.
        table: both branches, row-aligned.
        held_out: every policy's held-out predictions.
        curves: policy -> accuracy at each rate of ``grid`` (all rows).
        popqa_curves: the same on PopQA rows (popularity is defined only there).
        grid: retrieval rates of the curves.
    """

    summary: dict[str, Any]
    table: BenchTable
    held_out: HeldOutSet
    curves: dict[str, NDArray[np.float64]]
    popqa_curves: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    grid: NDArray[np.float64] = field(default_factory=rate_grid)


def run_branches(
    lm: LanguageModel,
    datasets: Sequence[QADataset],
    knowledge_base: Any,
    *,
    knowledge_base_dir: Path,
    k: int | None = None,
    closed_book_cache: Path | None = None,
    retrieval_cache: Path | None = None,
    batch_size: int | None = None,
    timing_sample: int = DEFAULT_SAMPLE,
    progress: bool = True,
) -> tuple[BenchTable, dict[str, Any]]:
    """Both branches of every question (cached and resumable).

    Args:
        lm: the model.
        datasets: the questions.
        knowledge_base: the loaded knowledge base.
        knowledge_base_dir: its directory (keys the retrieval cache).
        k: passages per question (default: the router's).
        closed_book_cache: closed-book cache root.
        retrieval_cache: retrieval-branch cache root.
        batch_size: prompts per forward pass.
        timing_sample: questions per dataset whose closed-book decode is re-timed now (0 = keep
            the cached times as they are).
        progress: progress bars.

    Returns:
        ``(table, run facts)``: the seconds each phase took and the decode re-timing.
    """
    if not datasets:
        raise DataError("no datasets to benchmark")
    cb_records, rag_records = [], []
    seconds: dict[str, float] = {}
    timings: dict[str, dict[str, Any]] = {}
    for ds in datasets:
        start = time.perf_counter()
        records = run_closed_book(
            lm, ds, cache_dir=closed_book_cache, batch_size=batch_size, progress=progress
        )
        cb_records.extend(records)
        seconds[f"closed_book/{ds.name}"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        rag_records.extend(
            run_retrieval_branch(
                lm,
                ds,
                knowledge_base,
                knowledge_base_dir=knowledge_base_dir,
                k=k,
                cache_dir=retrieval_cache,
                batch_size=batch_size,
                progress=progress,
            )
        )
        seconds[f"retrieval/{ds.name}"] = round(time.perf_counter() - start, 1)
        if timing_sample:
            timing = time_closed_book_decode(
                lm, records, sample=timing_sample, batch_size=batch_size
            )
            timings[ds.name] = timing.to_dict()
    table = build_bench_table(
        cb_records,
        rag_records,
        model_id=lm.model_id,
        decode_factor={k: v["factor"] for k, v in timings.items()},
    )
    return table, {"seconds": seconds, "closed_book_decode_retiming": timings}


def _curves(
    held: HeldOutSet, table: BenchTable, rows: NDArray[np.bool_], seed: int
) -> dict[str, NDArray[np.float64]]:
    cb, rag = table.cb_correct[rows], table.rag_correct[rows]
    grid = rate_grid()
    out = {"random": random_curve(cb, rag, grid)}
    for name, policy in held.policies.items():
        if policy.score is None or not policy.rows[rows].all():
            continue
        out[name] = accuracy_curve(policy.score[rows], cb, rag, grid=grid, seed=seed)
    return out


def _curve_summary(
    curves: dict[str, NDArray[np.float64]], headline: str, *, low: float = 0.0
) -> dict[str, Any]:
    """Each curve's mean accuracy; every curve against random; the headline against all others.

    ``low`` restricts the comparison to retrieval rates >= ``low``.
    """
    grid = rate_grid()
    keep = (grid > 0) & (grid < 1) & (grid >= low - 1e-12)
    out: dict[str, Any] = {
        "rates_from": low,
        "mean_accuracy": {k: round(float(v[keep].mean()), 5) for k, v in curves.items()},
        "vs_random": {
            k: compare_curves(v, curves["random"], grid=grid, low=low).to_dict()
            for k, v in curves.items()
            if k != "random"
        },
    }
    if headline in curves:
        out["headline_vs"] = {
            k: compare_curves(curves[headline], v, grid=grid, low=low).to_dict()
            for k, v in curves.items()
            if k != headline
        }
    return out


def _curve_targets(
    curves: dict[str, Any],
    held: HeldOutSet,
    headline: str,
    table: BenchTable,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    vs = curves.get("headline_vs", {})
    singles = [n for n, p in held.policies.items() if p.family == "single" and n in vs]
    below = [n for n in singles if vs[n]["mean_difference"] <= 0]
    vs_random = curves["vs_random"].get(headline, {})
    vs_question = vs.get(QUESTION_ONLY)
    low = curves["rates_from"]
    head = held.policies[headline].score
    assert head is not None
    cis: dict[str, list[float | None]] = {}
    others: dict[str, NDArray[np.float64] | None] = {"random": None}
    if QUESTION_ONLY in held.policies:
        others[QUESTION_ONLY] = held.policies[QUESTION_ONLY].score
    for name, other in others.items():
        est, lo, hi = bootstrap_mean_difference(
            head,
            other,
            table.cb_correct,
            table.rag_correct,
            low=low,
            n_boot=min(n_boot, 500),
            seed=seed,
        )
        cis[name] = [round(v, 5) if np.isfinite(v) else None for v in (est, lo, hi)]
    return {
        "rates_from": curves["rates_from"],
        "above_random_at_every_rate": bool(vs_random.get("share_above") == 1.0),
        "share_of_rates_above_random": vs_random.get("share_above"),
        "min_difference_to_random": vs_random.get("min_difference"),
        "mean_difference_to_random": vs_random.get("mean_difference"),
        "mean_difference_to_random_ci95": cis["random"],
        "above_every_single_feature_on_average": not below,
        "single_features_not_beaten_on_average": below,
        "single_features_compared": len(singles),
        "above_question_only_on_average": None
        if vs_question is None
        else bool(vs_question["mean_difference"] > 0),
        "mean_difference_to_question_only": None
        if vs_question is None
        else vs_question["mean_difference"],
        "mean_difference_to_question_only_ci95": cis.get(QUESTION_ONLY),
    }


def _targets(
    summary: dict[str, Any],
    held: HeldOutSet,
    headline: str,
    table: BenchTable,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    policies = summary["policies"]
    if headline not in policies:
        return {"note": f"{headline} could not be fitted"}
    head = policies[headline]
    always = policies["always"]
    diff = head["accuracy_minus_always"]
    return {
        "policy": headline,
        "curve": _curve_targets(summary["curves"], held, headline, table, n_boot=n_boot, seed=seed),
        "curve_high_rates": _curve_targets(
            summary["curves_high_rates"], held, headline, table, n_boot=n_boot, seed=seed
        ),
        "operating_rule": DEFAULT_RULE,
        "accuracy": head["accuracy"][0],
        "always_accuracy": always["accuracy"][0],
        "accuracy_minus_always": diff,
        "accuracy_within_1pt_of_always": bool(
            diff[0] is not None and diff[0] >= -ACCURACY_TOLERANCE
        ),
        "retrieval_rate": head["retrieval_rate"],
        "oracle_retrieval_rate": policies["oracle"]["retrieval_rate"],
        "savings_efficiency": head["savings_efficiency"],
        "savings_efficiency_at_least_0.5": bool(
            (head["savings_efficiency"] or 0.0) >= SAVINGS_TARGET
        ),
        "total_seconds": head["total_seconds"],
        "always_total_seconds": always["total_seconds"],
        "seconds_vs_always": round(head["total_seconds"] / always["total_seconds"], 4)
        if always["total_seconds"]
        else None,
    }


def evaluate_benchmark(
    table: BenchTable,
    *,
    folds: int = 5,
    seed: int = 0,
    calibration: str = "sigmoid",
    bootstrap: int = 1000,
    singles: bool = True,
    progress: bool = False,
) -> BenchmarkResult:
    """Cross-fit and score every policy on cached branches (no model needed).

    Args:
        table: both branches (:func:`run_branches`).
        folds: outer (and inner) cross-validation folds.
        seed: split, tie-breaking and bootstrap seed.
        calibration: calibration method of every fitted policy (the shipped policies use
            ``sigmoid``).
        bootstrap: resamples for the 95% intervals (0 = none).
        singles: also score each model feature alone.
        progress: progress bar over the policy fits.
    """
    held = held_out_policies(
        table, folds=folds, calibration=calibration, seed=seed, singles=singles, progress=progress
    )
    always_acc = outcomes(np.ones(table.n, dtype=bool), table)["accuracy"]
    rule = RULES[DEFAULT_RULE]
    decisions: dict[str, NDArray[np.bool_]] = {}
    policies: dict[str, dict[str, Any]] = {}
    for name, policy in held.policies.items():
        retrieve, cuts = policy.decide(rule, table)
        decisions[name] = retrieve
        policies[name] = evaluate_decisions(
            policy,
            retrieve,
            table,
            always_accuracy=always_acc,
            n_boot=bootstrap if policy.family != "single" else min(bootstrap, 200),
            seed=seed,
            thresholds=cuts,
        )
    if HEADLINE in policies:
        rate = float(decisions[HEADLINE].mean())
        policies["random (at the fused rate)"] = random_at_rate(
            rate, table, always_accuracy=always_acc, n_boot=bootstrap, seed=seed
        )

    operating_points: dict[str, dict[str, Any]] = {}
    suggestion: dict[str, Any] | None = None
    if HEADLINE in held.policies:
        head = held.policies[HEADLINE]
        for label, other in RULES.items():
            retrieve, cuts = head.decide(other, table)
            operating_points[label] = evaluate_decisions(
                head,
                retrieve,
                table,
                always_accuracy=always_acc,
                n_boot=bootstrap,
                seed=seed,
                thresholds=cuts,
            )
        assert head.p_known is not None
        p, cb, rag = head.p_known, table.cb_correct, table.rag_correct
        pooled = {label: round(float(other(p, cb, rag)), 4) for label, other in RULES.items()}
        fit = fit_break_even(p, cb, rag)
        suggestion = {
            "rule": DEFAULT_RULE,
            "fitted_on": "pooled held-out p(known) of all questions (as fit_fused chooses "
            "thresholds from out-of-fold probabilities)",
            "threshold": pooled[DEFAULT_RULE],
            "operating_point": f"probability:{pooled[DEFAULT_RULE]:.3f}",
            "cuts_by_rule": pooled,
            "break_even_curve": {
                "intercept": round(fit.intercept, 4),
                "slope": round(fit.slope, 4),
            },
        }

    grid = rate_grid()
    everywhere = np.ones(table.n, dtype=bool)
    curves = _curves(held, table, everywhere, seed)
    pop = popqa_rows(table)
    popqa_curves = _curves(held, table, pop, seed) if pop.sum() >= 2 else {}
    lab = table.labelled
    shown = [p for p in ("never", "always", "oracle", HEADLINE, POPULARITY) if p in decisions]
    summary: dict[str, Any] = {
        "model_id": table.model_id,
        "n_questions": table.n,
        "folds": len(held.splits),
        "seed": seed,
        "calibration": calibration,
        "bootstrap_resamples": bootstrap,
        "operating_rule": DEFAULT_RULE,
        "headline_policy": HEADLINE,
        "branches": summarize_branches(table),
        "policies": policies,
        "skipped_policies": held.skipped,
        "operating_points": operating_points,
        "suggested_default_operating_point": suggestion,
        "curves": _curve_summary(curves, HEADLINE),
        "curves_high_rates": _curve_summary(curves, HEADLINE, low=HIGH_RATES),
        "popqa_curves": _curve_summary(popqa_curves, HEADLINE) if popqa_curves else {},
        "per_dataset": {
            name: per_group(decisions[name], table, lab.datasets, held.policies[name].rows)
            for name in shown
        },
        "popqa": breakdowns(table, {name: decisions[name] for name in shown}),
        "sparsity_vs_log_popularity": sparsity_popularity_correlations(table),
    }
    summary["targets"] = _targets(summary, held, HEADLINE, table, n_boot=bootstrap, seed=seed)
    return BenchmarkResult(summary, table, held, curves, popqa_curves, grid)


def dataset_record(datasets: Sequence[QADataset]) -> list[dict[str, Any]]:
    """What exactly was run: file, content hash, rows and a digest of the row ids."""
    return [
        {
            "name": ds.name,
            "path": str(ds.path),
            "content_hash": ds.content_hash,
            "n": len(ds),
            "ids_sha256": ids_digest(ds),
        }
        for ds in datasets
    ]
