"""What a policy's held-out decisions are worth: accuracy, cost, skips, ranking and calibration.

A question's outcome under a policy is the one outcome rule
(:func:`~knowgate.evaluation.both_branches.policy_outcome`): its retrieval answer when the policy
retrieves, its closed-book answer otherwise, with the LM calls and latency of the request's path
through the router. Reported per policy (:class:`~knowgate.evaluation.bench.summary.PolicyResult`,
over the rows where it is defined):

- In-Accuracy with a bootstrap 95% interval, its paired difference from always retrieving and
  from random gating at the policy's own retrieval rate; EM and F1;
- retrieval rate (= retriever calls per question), LM calls per question, and the bounded
  savings quantities: **skip recall** (share of the closed-book-correct questions the policy
  skips) and **skip precision** (share of skipped questions answered correctly closed-book),
  with Wilson intervals;
- AUROC of the score for closed-book correctness (bootstrap 95% interval), also within PopQA
  relation and within dataset (pooled AUROC over mixed templates can be high for a score that
  only recognises the template); ECE (15 bins) and Brier of the calibrated p(known);
- mean wall time per question.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from statsmodels.stats.proportion import proportion_confint

from knowgate.evaluation.bench.policies import HeldOutPolicy
from knowgate.evaluation.bench.summary import (
    BranchSummary,
    GroupOutcome,
    PolicyResult,
    RankingMetrics,
)
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import Outcome, policy_outcome
from knowgate.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    brier_score,
    expected_calibration_error,
    stratified_auroc,
)
from knowgate.evaluation.reporting import Interval, finite, mean_interval


def _mean(values: NDArray[np.float64]) -> float | None:
    v = values[np.isfinite(values)]
    return finite(float(v.mean())) if v.size else None


def wilson(count: float, total: float) -> Interval:
    """A proportion with its Wilson 95% interval (``None`` estimate over no rows)."""
    if total <= 0:
        return Interval(None)
    low, high = proportion_confint(round(count), round(total), alpha=0.05, method="wilson")
    return Interval.of(count / total, float(low), float(high))


def skip_quality(
    skipped: NDArray[np.float64], cb_correct: NDArray[np.float64]
) -> tuple[Interval, Interval | None]:
    """Skip recall and skip precision of (possibly fractional) skip decisions.

    Skip recall: share of the closed-book-correct questions that are skipped. Skip precision:
    share of the skipped questions that are closed-book-correct (``None`` when none is skipped).
    Both are bounded in [0, 1]; random gating's expected precision is the closed-book accuracy.
    Fractional skips (random gating's expected decisions) get no interval.
    """
    hits = float(np.sum(skipped * cb_correct))
    known = float(np.sum(cb_correct))
    n_skipped = float(np.sum(skipped))
    exact = bool(np.all((skipped == 0) | (skipped == 1)))
    if not exact:
        recall = Interval.of(hits / known if known else None)
        precision = Interval.of(hits / n_skipped) if n_skipped else None
        return recall, precision
    return wilson(hits, known), (wilson(hits, n_skipped) if n_skipped else None)


def ranking_metrics(
    policy: HeldOutPolicy, table: BenchTable, n_boot: int, seed: int
) -> RankingMetrics | None:
    """AUROC (pooled, within relation, within dataset), ECE and Brier of the held-out scores.

    A fixed rule (a score but no calibrated probability) gets its AUROCs, no ECE or Brier.
    """
    if policy.score is None:
        return None
    lab = table.labelled
    rows = policy.rows
    y, s = lab.y[rows], policy.score[rows]
    p = None if policy.p_known is None else policy.p_known[rows]
    rel = rows & (lab.relations != "")
    ci = None
    if n_boot and policy.family != "oracle":
        boot = bootstrap_ci(auroc, y, s, n_resamples=n_boot, seed=seed)
        ci = Interval.of(boot.estimate, boot.low, boot.high)
    return RankingMetrics(
        auroc=finite(auroc(y, s)),
        auroc_ci95=ci,
        auroc_within_relation=finite(
            stratified_auroc(lab.y[rel], policy.score[rel], lab.relations[rel]).auroc
        )
        if rel.any()
        else None,
        auroc_within_dataset=finite(stratified_auroc(y, s, lab.datasets[rows]).auroc),
        ece=None if p is None else finite(expected_calibration_error(y, p)),
        brier=None if p is None else finite(brier_score(y, p)),
    )


def outcome_result(
    name: str,
    family: str,
    stage: str,
    outcome: Outcome,
    table: BenchTable,
    rows: NDArray[np.bool_],
    *,
    n_features: int = 0,
    n_boot: int = 1000,
    seed: int = 0,
    random_reference: bool = True,
) -> PolicyResult:
    """Every decision metric of an outcome over ``rows`` (no ranking metrics).

    ``random_reference`` adds the paired difference from random gating at the outcome's own
    retrieval rate (expected accuracy, on the same rows).
    """
    branches = table.branches.subset(rows)
    cb, rag = branches.closed_book_correct, branches.retrieval_correct
    rate = outcome.retrieval_rate
    random_expected = rate * rag + (1.0 - rate) * cb
    recall, precision = skip_quality(1.0 - outcome.retrieved, cb)
    datasets = table.labelled.datasets[rows]
    per = {
        str(d): GroupOutcome(
            n=int(np.sum(datasets == d)),
            accuracy=finite(float(outcome.correct[datasets == d].mean())),
            retrieval_rate=finite(float(outcome.retrieved[datasets == d].mean())),
        )
        for d in dict.fromkeys(datasets.tolist())
    }
    return PolicyResult(
        name=name,
        family=family,
        stage=stage,
        n_features=n_features,
        n=int(rows.sum()),
        accuracy=mean_interval(outcome.correct, n_boot, seed),
        accuracy_minus_always=mean_interval(outcome.correct - rag, n_boot, seed),
        accuracy_minus_random=mean_interval(outcome.correct - random_expected, n_boot, seed)
        if random_reference
        else None,
        exact_match=_mean(outcome.exact_match),
        f1=_mean(outcome.score),
        retrieval_rate=rate,
        lm_calls_per_question=outcome.lm_calls_per_question,
        skip_recall=recall,
        skip_precision=precision,
        mean_seconds=outcome.mean_seconds,
        total_seconds=float(outcome.seconds.sum()),
        per_dataset=per,
    )


def evaluate_decisions(
    policy: HeldOutPolicy,
    retrieve: NDArray[np.bool_],
    table: BenchTable,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: list[float] | None = None,
) -> PolicyResult:
    """Every metric of one policy's held-out decisions (over the policy's rows).

    Args:
        policy: the policy (its rows, scores, stage and costs).
        retrieve: held-out retrieve decision per row of ``table``.
        table: both branches.
        n_boot: bootstrap resamples for the intervals (0 = none).
        seed: bootstrap seed.
        thresholds: the cut each outer fold chose (reported).
    """
    rows = policy.rows
    result = outcome_result(
        policy.name,
        policy.family,
        policy.stage,
        policy.outcome(table, retrieve),
        table,
        rows,
        n_features=len(policy.features),
        n_boot=n_boot,
        seed=seed,
        random_reference=policy.family != "baseline",
    )
    per = dict(result.per_dataset)
    if policy.score is not None:
        datasets = table.labelled.datasets
        for name, group in per.items():
            m = rows & (datasets == name)
            per[name] = GroupOutcome(
                group.n,
                group.accuracy,
                group.retrieval_rate,
                finite(auroc(table.cb_correct[m], policy.score[m])),
            )
    extra = policy.extra_seconds
    extra_mean = float(np.mean(extra[rows])) if isinstance(extra, np.ndarray) else float(extra)
    return PolicyResult(
        **{
            **result.__dict__,
            "thresholds_per_fold": tuple(thresholds or ()),
            "ranking": ranking_metrics(policy, table, n_boot, seed),
            "per_dataset": per,
            "choices_per_fold": policy.choices,
            "extra_lm_calls": policy.extra_lm_calls,
            "extra_seconds": extra_mean,
        }
    )


def random_at_rate(
    rate: float, table: BenchTable, *, n_boot: int = 1000, seed: int = 0
) -> PolicyResult:
    """Random gating at ``rate``: expected outcomes (no draw noise), served as signal-free."""
    everywhere = np.ones(table.n, dtype=bool)
    outcome = table.outcome(np.full(table.n, rate), "none")
    return outcome_result(
        f"random at {rate:.3f}",
        "random",
        "none",
        outcome,
        table,
        everywhere,
        n_boot=n_boot,
        seed=seed,
        random_reference=False,
    )


def per_group(
    retrieve: NDArray[np.bool_],
    table: BenchTable,
    groups: NDArray[np.str_],
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, GroupOutcome]:
    """Accuracy and retrieval rate per group (dataset, relation, popularity bucket)."""
    acc = np.where(retrieve, table.rag_correct, table.cb_correct).astype(np.float64)
    keep = np.ones(table.n, dtype=bool) if mask is None else mask
    out: dict[str, GroupOutcome] = {}
    for name in dict.fromkeys(groups[keep].tolist()):
        m = keep & (groups == name)
        out[str(name)] = GroupOutcome(
            n=int(m.sum()),
            accuracy=finite(float(acc[m].mean())),
            retrieval_rate=finite(float(retrieve[m].mean())),
        )
    return out


def summarize_branches(table: BenchTable) -> dict[str, BranchSummary]:
    """Per dataset (and overall): closed-book, retrieval and oracle accuracy, evidence, times."""
    lab, b = table.labelled, table.branches
    out: dict[str, BranchSummary] = {}
    for name in [*dict.fromkeys(lab.datasets.tolist()), "all"]:
        m = np.ones(table.n, dtype=bool) if name == "all" else lab.datasets == name
        sub = b.subset(m)
        ev = table.evidence_hit[m]
        cb, rag = lab.y[m], table.rag_correct[m]
        ones, zeros = np.ones(sub.n), np.zeros(sub.n)
        out[name] = BranchSummary(
            n=int(m.sum()),
            closed_book_accuracy=finite(float(cb.mean())),
            closed_book_em=_mean(sub.closed_book_exact_match),
            closed_book_f1=_mean(sub.closed_book_score),
            retrieval_accuracy=finite(float(rag.mean())),
            retrieval_em=_mean(sub.retrieval_exact_match),
            retrieval_f1=_mean(sub.retrieval_score),
            oracle_accuracy=finite(float(np.maximum(cb, rag).mean())),
            oracle_retrieval_rate=finite(1.0 - float(cb.mean())),
            closed_book_right_retrieval_wrong=int(np.sum((cb == 1) & (rag == 0))),
            closed_book_wrong_retrieval_right=int(np.sum((cb == 0) & (rag == 1))),
            evidence_in_prompt=finite(float(np.nanmean(ev))) if np.isfinite(ev).any() else None,
            questions_with_evidence=int(np.isfinite(ev).sum()),
            mean_closed_book_seconds=policy_outcome(sub, zeros, stage="none").mean_seconds,
            mean_gated_closed_book_seconds=policy_outcome(sub, zeros, stage="prefill").mean_seconds,
            mean_gated_retrieval_seconds=policy_outcome(sub, ones, stage="prefill").mean_seconds,
            mean_plain_rag_seconds=policy_outcome(sub, ones, stage="none").mean_seconds,
        )
    return out
