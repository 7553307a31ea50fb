"""The benchmark: both branches per question (cached), every policy scored by cross-fitting.

:func:`run_branches` answers each question closed-book (the cache ``knowgate calibrate``
fills) and with retrieval through the router (its own cache) and re-times the closed-book stages.
:func:`evaluate_benchmark` then needs no model: it cross-fits every policy, applies each one's
operating point chosen on training folds only, scores the shipped recipe leave-one-dataset-out,
runs the null check, and returns the typed summary that
:mod:`knowgate.evaluation.bench.report` writes out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError
from knowgate.evaluation.bench.curves import (
    accuracy_curve,
    bootstrap_mean_difference,
    compare_curves,
    random_curve,
    rate_grid,
)
from knowgate.evaluation.bench.field import COMPARED, field_comparison
from knowgate.evaluation.bench.layers import layer_study
from knowgate.evaluation.bench.leave_one_dataset_out import (
    leave_one_dataset_out,
    leave_one_dataset_out_auroc,
    recipe_for,
)
from knowgate.evaluation.bench.null_check import null_check
from knowgate.evaluation.bench.policies import (
    HEADLINE,
    POLICY_FAMILIES,
    POPULARITY,
    QUESTION_ONLY,
    UNSELECTED_HEADLINE,
    HeldOutSet,
    PolicyCandidate,
    candidates,
    held_out_policies,
)
from knowgate.evaluation.bench.policy_results import (
    evaluate_decisions,
    per_group,
    random_at_rate,
    summarize_branches,
)
from knowgate.evaluation.bench.popularity import (
    breakdowns,
    popqa_rows,
    sparsity_popularity_correlations,
)
from knowgate.evaluation.bench.summary import (
    BenchmarkSummary,
    CurveSummary,
    CurveTargets,
    PolicyResult,
    SuggestedOperatingPoint,
    Targets,
)
from knowgate.evaluation.bench.table import BenchTable, build_bench_table
from knowgate.evaluation.branches.cache import BatchExecutor
from knowgate.evaluation.branches.closed_book import (
    ClosedBookArrays,
    closed_book_arrays,
    run_closed_book,
)
from knowgate.evaluation.branches.peers import PeerRecord, run_peer_signals
from knowgate.evaluation.branches.retrieval import RetrievalBranch
from knowgate.evaluation.branches.timing import (
    DEFAULT_SAMPLE,
    ClosedBookTiming,
    time_closed_book_stages,
)
from knowgate.evaluation.datasets import QADataset
from knowgate.evaluation.operating_rules import DEFAULT_RULE, RULES, fit_break_even
from knowgate.evaluation.reporting import Interval
from knowgate.evaluation.sampling import ids_digest, sample_dataset
from knowgate.models.remote import RemoteModel

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

log = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.01
SKIP_RECALL_TARGET = 0.5
HIGH_RATES = 0.8
"""Curves are also compared on retrieval rates >= 0.8 only: where the oracle of a small model
sits (it retrieves for the 88-96% of questions the model cannot answer), and where a gate that
retrieves "only when the model does not know" operates. Below it, a curve mostly measures which
questions retrieval helps most - not what the model knows."""
RANDOM_AT_HEADLINE = "random (at the fused rate)"
LATENCY = (
    "mean wall time per question as the router serves the request, summed from the question's "
    "share of each batched stage (batches as run): gate = prefill + signals, then decode or "
    "retrieval + answer with passages; always = retrieval + answer with passages (plain RAG); "
    "never = prefill + decode. Not a per-request timing."
)


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
        field_curves: the field comparison's curves, on the questions every method has.
    """

    summary: BenchmarkSummary
    table: BenchTable
    held_out: HeldOutSet
    curves: dict[str, NDArray[np.float64]]
    popqa_curves: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    grid: NDArray[np.float64] = field(default_factory=rate_grid)
    field_curves: dict[str, NDArray[np.float64]] = field(default_factory=dict)


def run_branches(
    lm: LanguageModel | RemoteModel,
    datasets: Sequence[QADataset],
    knowledge_base: Any,
    *,
    knowledge_base_dir: Path,
    k: int | None = None,
    closed_book_cache: Path | None = None,
    retrieval_cache: Path | None = None,
    batch_size: int | None = None,
    timing_sample: int = DEFAULT_SAMPLE,
    peers: bool = True,
    peer_sample: Mapping[str, int] | None = None,
    peer_seed: int = 0,
    peer_cache: Path | None = None,
    progress: bool = True,
    executor: BatchExecutor | None = None,
) -> tuple[BenchTable, dict[str, float], dict[str, ClosedBookTiming]]:
    """Both branches of every question (cached and resumable), and the peers' extra calls.

    Args:
        lm: the model.
        datasets: the questions.
        knowledge_base: the loaded knowledge base.
        knowledge_base_dir: its directory (keys the retrieval cache).
        k: passages per question (default: the router's).
        closed_book_cache: closed-book cache root.
        retrieval_cache: retrieval-branch cache root.
        batch_size: prompts per forward pass.
        timing_sample: questions per dataset whose closed-book stages are re-timed now (0 = keep
            the cached times as they are, and count no signal time). A served model is not
            re-timed: its cached draft times are used as they are (its server, not this
            machine, sets them).
        peers: also run the peers branch (sampled answers, the self-report prompt).
        peer_sample: dataset name -> run the peers on a seeded sample of that many of its
            questions (the peers' K samples are the costly part); others run on every question.
        peer_seed: seed of ``peer_sample``.
        peer_cache: peers-branch cache root.
        progress: progress bars.
        executor: answer the uncached batches of every branch there (Ray actors, one model
            each) instead of with ``lm``; the caches written are the same. The closed-book
            re-timing still runs here, on ``lm``: it measures this machine's serving cost.

    The closed-book cache's stored arrays (hidden states, per-layer sparsity) are loaded when
    every dataset's cache has them; otherwise the probes and the layer study are skipped.

    Returns:
        ``(table, seconds each phase took, closed-book re-timing per dataset)``.
    """
    if not datasets:
        raise DataError("no datasets to benchmark")
    retrieval = RetrievalBranch(lm, knowledge_base, knowledge_base_dir=knowledge_base_dir, k=k)
    cb_records, rag_records = [], []
    peer_records: list[PeerRecord] = []
    # A served model returns no activations: no stored arrays, so no probes or layer study.
    arrays: list[ClosedBookArrays] | None = None if isinstance(lm, RemoteModel) else []
    seconds: dict[str, float] = {}
    timings: dict[str, ClosedBookTiming] = {}
    for ds in datasets:
        start = time.perf_counter()
        records = run_closed_book(
            lm,
            ds,
            cache_dir=closed_book_cache,
            batch_size=batch_size,
            progress=progress,
            executor=executor,
        )
        cb_records.extend(records)
        if arrays is not None and not isinstance(lm, RemoteModel):
            try:
                arrays.append(closed_book_arrays(lm, ds, closed_book_cache))
            except DataError as exc:
                log.warning("no stored hidden states for %s (%s): probes skipped", ds.name, exc)
                arrays = None
        seconds[f"closed_book/{ds.name}"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        rag_records.extend(
            retrieval.run(
                ds,
                cache_dir=retrieval_cache,
                batch_size=batch_size,
                progress=progress,
                executor=executor,
            )
        )
        seconds[f"retrieval/{ds.name}"] = round(time.perf_counter() - start, 1)
        if peers and not isinstance(lm, RemoteModel):  # a served model: no peers branch
            start = time.perf_counter()
            size = (peer_sample or {}).get(ds.name)
            subset = sample_dataset(ds, size, seed=peer_seed) if size else ds
            peer_records.extend(
                run_peer_signals(
                    lm,
                    subset,
                    cache_dir=peer_cache,
                    batch_size=batch_size,
                    progress=progress,
                    executor=executor,
                )
            )
            seconds[f"peers/{ds.name}"] = round(time.perf_counter() - start, 1)
        if timing_sample and not isinstance(lm, RemoteModel):
            timings[ds.name] = time_closed_book_stages(
                lm, records, sample=timing_sample, batch_size=batch_size
            )
    table = build_bench_table(
        cb_records,
        rag_records,
        model_id=lm.model_id,
        timings=timings,
        arrays=ClosedBookArrays.concatenate(arrays) if arrays else None,
        peers=peer_records if peers else None,
    )
    return table, seconds, timings


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
) -> CurveSummary:
    """Each curve's mean accuracy; every curve against random; the headline against all others.

    ``low`` restricts the comparison to retrieval rates >= ``low``.
    """
    grid = rate_grid()
    keep = (grid > 0) & (grid < 1) & (grid >= low - 1e-12)
    return CurveSummary(
        rates_from=low,
        mean_accuracy={k: float(v[keep].mean()) for k, v in curves.items()},
        vs_random={
            k: compare_curves(v, curves["random"], grid=grid, low=low)
            for k, v in curves.items()
            if k != "random"
        },
        headline_vs={
            k: compare_curves(curves[headline], v, grid=grid, low=low)
            for k, v in curves.items()
            if k != headline
        }
        if headline in curves
        else {},
    )


def _curve_targets(
    curves: CurveSummary,
    held: HeldOutSet,
    headline: str,
    table: BenchTable,
    *,
    n_boot: int,
    seed: int,
) -> CurveTargets | None:
    if headline not in held.policies or not curves.headline_vs:
        return None
    vs = curves.headline_vs
    singles = [n for n, p in held.policies.items() if p.family == "single" and n in vs]
    below = tuple(n for n in singles if vs[n].mean_difference <= 0)
    vs_random = curves.vs_random.get(headline)
    low = curves.rates_from
    head = held.policies[headline].score
    assert head is not None

    def mean_difference(other: NDArray[np.float64] | None) -> Interval:
        est, lo, hi = bootstrap_mean_difference(
            head,
            other,
            table.cb_correct,
            table.rag_correct,
            low=low,
            n_boot=min(n_boot, 500),
            seed=seed,
        )
        return Interval.of(est, lo, hi)

    question = held.policies.get(QUESTION_ONLY)
    return CurveTargets(
        rates_from=low,
        above_random_at_every_rate=bool(vs_random is not None and vs_random.share_above == 1.0),
        share_of_rates_above_random=None if vs_random is None else vs_random.share_above,
        min_difference_to_random=None if vs_random is None else vs_random.min_difference,
        mean_difference_to_random=mean_difference(None),
        above_every_single_feature_on_average=not below,
        single_features_not_beaten_on_average=below,
        single_features_compared=len(singles),
        mean_difference_to_question_only=None
        if question is None or question.score is None
        else mean_difference(question.score),
    )


def _targets(
    policies: dict[str, PolicyResult],
    held: HeldOutSet,
    curves: tuple[CurveSummary, CurveSummary],
    table: BenchTable,
    *,
    n_boot: int,
    seed: int,
) -> Targets | None:
    if HEADLINE not in policies:
        return None
    head, always = policies[HEADLINE], policies["always"]
    diff = head.accuracy_minus_always
    vs_random = head.accuracy_minus_random
    base = float(table.cb_correct.mean())
    precision = head.skip_precision
    return Targets(
        policy=HEADLINE,
        operating_rule=DEFAULT_RULE,
        accuracy=head.accuracy.estimate,
        always_accuracy=always.accuracy.estimate,
        accuracy_minus_always=diff,
        accuracy_within_1pt_of_always=bool(
            diff.estimate is not None and diff.estimate >= -ACCURACY_TOLERANCE
        ),
        accuracy_minus_random=vs_random,
        above_random_at_same_rate=bool(
            vs_random is not None and vs_random.low is not None and vs_random.low > 0
        ),
        retrieval_rate=head.retrieval_rate,
        skip_recall=head.skip_recall,
        skip_recall_at_least_half=bool((head.skip_recall.estimate or 0.0) >= SKIP_RECALL_TARGET),
        skip_precision=precision,
        closed_book_accuracy=base,
        skip_precision_above_random=bool(
            precision is not None and precision.low is not None and precision.low > base
        ),
        mean_seconds=head.mean_seconds,
        always_mean_seconds=always.mean_seconds,
        seconds_vs_always=head.mean_seconds / always.mean_seconds if always.mean_seconds else None,
        curve=_curve_targets(curves[0], held, HEADLINE, table, n_boot=n_boot, seed=seed),
        curve_high_rates=_curve_targets(curves[1], held, HEADLINE, table, n_boot=n_boot, seed=seed),
    )


def _suggestion(held: HeldOutSet, table: BenchTable) -> SuggestedOperatingPoint | None:
    head = held.policies.get(HEADLINE)
    if head is None or head.p_known is None:
        return None
    p, cb, rag = head.p_known, table.cb_correct, table.rag_correct
    pooled = {label: float(rule(p, cb, rag)) for label, rule in RULES.items()}
    fit = fit_break_even(p, cb, rag)
    return SuggestedOperatingPoint(
        rule=DEFAULT_RULE,
        fitted_on="pooled held-out p(known) of all questions (as fit_fused chooses thresholds "
        "from out-of-fold probabilities); its own held-out figure is the leave-one-dataset-out "
        "table",
        threshold=pooled[DEFAULT_RULE],
        operating_point=f"probability:{pooled[DEFAULT_RULE]:.3f}",
        cuts_by_rule=pooled,
        break_even_intercept=fit.intercept,
        break_even_slope=fit.slope,
    )


def evaluate_benchmark(
    table: BenchTable,
    *,
    folds: int = 5,
    seed: int = 0,
    calibration: str = "sigmoid",
    bootstrap: int = 1000,
    singles: bool = True,
    families: Sequence[str] | None = None,
    lodo: bool = True,
    null: bool = True,
    field_table: bool = True,
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
        families: the policy families to fit (default: every one; ``singles=False`` drops
            ``single``).
        lodo: score the shipped recipe leave-one-dataset-out, and every main policy's and
            signal's AUROC on each dataset fitted without it.
        null: run the null check (main policies on permuted labels).
        field_table: compare knowgate's policies with the field's methods (AdaRAGUE-style
            table; needs the peers' policies).
        progress: progress bar over the policy fits.
    """
    chosen = list(families if families is not None else POLICY_FAMILIES)
    if not singles:
        chosen = [f for f in chosen if f != "single"]
    jobs = candidates(table, chosen)
    held = held_out_policies(
        table,
        folds=folds,
        calibration=calibration,
        seed=seed,
        families=chosen,
        progress=progress,
        jobs=jobs,
    )
    rule = RULES[DEFAULT_RULE]
    decisions: dict[str, NDArray[np.bool_]] = {}
    policies: dict[str, PolicyResult] = {}
    for name, policy in held.policies.items():
        retrieve, cuts = policy.decide(rule, table)
        decisions[name] = retrieve
        policies[name] = evaluate_decisions(
            policy,
            retrieve,
            table,
            n_boot=bootstrap if policy.family != "single" else min(bootstrap, 200),
            seed=seed,
            thresholds=cuts,
        )
    if HEADLINE in policies:
        policies[RANDOM_AT_HEADLINE] = random_at_rate(
            float(decisions[HEADLINE].mean()), table, n_boot=bootstrap, seed=seed
        )

    operating_points: dict[str, PolicyResult] = {}
    if HEADLINE in held.policies:
        head = held.policies[HEADLINE]
        for label, other in RULES.items():
            retrieve, cuts = head.decide(other, table)
            operating_points[label] = evaluate_decisions(
                head, retrieve, table, n_boot=bootstrap, seed=seed, thresholds=cuts
            )

    everywhere = np.ones(table.n, dtype=bool)
    curves = _curves(held, table, everywhere, seed)
    pop = popqa_rows(table)
    popqa_curves = _curves(held, table, pop, seed) if pop.sum() >= 2 else {}
    lab = table.labelled
    shown = [p for p in ("never", "always", "oracle", HEADLINE, POPULARITY) if p in decisions]
    all_rates = _curve_summary(curves, HEADLINE)
    high_rates = _curve_summary(curves, HEADLINE, low=HIGH_RATES)
    main = [c for c in jobs if c.family != "single" and isinstance(c, PolicyCandidate)]
    field_summary, field_curves = (
        field_comparison(
            table, held, decisions, operating_rule=DEFAULT_RULE, n_boot=bootstrap, seed=seed
        )
        if field_table
        else (None, {})
    )
    unseen_targets = {*COMPARED, UNSELECTED_HEADLINE, QUESTION_ONLY}
    lodo_jobs = [
        c
        for c in jobs
        if c.name in held.policies
        and (c.name in unseen_targets or c.family in ("peer", "popularity"))
    ]
    summary = BenchmarkSummary(
        model_id=table.model_id,
        n_questions=table.n,
        folds=len(held.splits),
        seed=seed,
        calibration=calibration,
        bootstrap_resamples=bootstrap,
        operating_rule=DEFAULT_RULE,
        headline_policy=HEADLINE,
        latency=LATENCY,
        branches=summarize_branches(table),
        policies=policies,
        skipped_policies=held.skipped,
        operating_points=operating_points,
        suggested_default_operating_point=_suggestion(held, table),
        curves=all_rates,
        curves_high_rates=high_rates,
        popqa_curves=_curve_summary(popqa_curves, HEADLINE) if popqa_curves else None,
        per_dataset={
            name: per_group(decisions[name], table, lab.datasets, held.policies[name].rows)
            for name in shown
        },
        popqa=breakdowns(table, {name: decisions[name] for name in shown}),
        sparsity_vs_log_popularity=sparsity_popularity_correlations(table),
        targets=_targets(
            policies, held, (all_rates, high_rates), table, n_boot=bootstrap, seed=seed
        ),
        leave_one_dataset_out=leave_one_dataset_out(
            table,
            recipe_for(lab, calibration=calibration, seed=seed),
            folds=folds,
            n_boot=bootstrap,
            seed=seed,
        )
        if lodo
        else None,
        null_check=null_check(table, main, folds=folds, calibration=calibration, seed=seed)
        if null and main
        else None,
        field_comparison=field_summary,
        layers=layer_study(table, held),
        leave_one_dataset_out_auroc=leave_one_dataset_out_auroc(
            table, held, lodo_jobs, calibration=calibration, folds=folds, seed=seed
        )
        if lodo
        else None,
    )
    return BenchmarkResult(
        summary, table, held, curves, popqa_curves, rate_grid(), field_curves=field_curves
    )


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
