"""What a policy's held-out decisions are worth: accuracy, cost, ranking and calibration.

A question's outcome under a policy is its retrieval answer when the policy retrieves, its
closed-book answer otherwise. Reported per policy (over the rows where it is defined):

- In-Accuracy, EM and F1 of the outcomes; accuracy with a bootstrap 95% interval, and its paired
  difference from always retrieving;
- retrieval rate (= retriever calls per question), LM calls per question (a gated request makes
  one pass, two when it retrieves; plain never/always pipelines make one), savings efficiency
  ``(1 - retrieval rate) / (1 - oracle retrieval rate)``;
- AUROC of the score for closed-book correctness (bootstrap 95% interval), also within PopQA
  relation and within dataset (pooled AUROC over mixed templates can be high for a score that
  only recognises the template); ECE (15 bins) and Brier of the calibrated p(known);
- mean wall time per question as the router would serve it (see
  :mod:`knowgate.evaluation.bench.both_branches`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.evaluation.bench.both_branches import BenchTable
from knowgate.evaluation.bench.held_out import HeldOutPolicy
from knowgate.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    brier_score,
    expected_calibration_error,
    stratified_auroc,
)


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def _ci(values: NDArray[np.float64], n_boot: int, seed: int) -> list[float | None]:
    if not n_boot:
        return [_r(float(values.mean())), None, None]
    ci = bootstrap_ci(np.mean, values, n_resamples=n_boot, seed=seed)
    return [_r(ci.estimate), _r(ci.low), _r(ci.high)]


def outcomes(retrieve: NDArray[np.bool_], table: BenchTable) -> dict[str, NDArray[np.float64]]:
    """Per-question accuracy, EM and F1 of a set of decisions."""
    return {
        "accuracy": np.where(retrieve, table.rag_correct, table.cb_correct).astype(np.float64),
        "em": np.where(retrieve, table.rag_em, table.cb_em),
        "f1": np.where(retrieve, table.rag_f1, table.cb_f1),
    }


def wall_seconds(
    retrieve: NDArray[np.bool_], table: BenchTable, policy: HeldOutPolicy
) -> NDArray[np.float64]:
    """Per-question wall time of the decisions as served (plain pipelines for never/always)."""
    if policy.name == "always":
        return table.plain_rag_seconds()
    draft = policy.stage == "draft"
    return np.where(
        retrieve, table.retrieval_seconds(draft_gate=draft), table.closed_book_seconds()
    )


def ranking_metrics(
    policy: HeldOutPolicy, table: BenchTable, rows: NDArray[np.bool_], n_boot: int, seed: int
) -> dict[str, Any]:
    """AUROC (pooled, within relation, within dataset), ECE and Brier of the held-out scores."""
    if policy.score is None or policy.p_known is None:
        return {}
    lab = table.labelled
    y, s, p = lab.y[rows], policy.score[rows], policy.p_known[rows]
    rel = rows & (lab.relations != "")
    out: dict[str, Any] = {"auroc": _r(auroc(y, s))}
    if n_boot and policy.family != "oracle":
        ci = bootstrap_ci(auroc, y, s, n_resamples=n_boot, seed=seed)
        out["auroc_ci95"] = [_r(ci.low), _r(ci.high)]
    out["auroc_within_relation"] = (
        _r(stratified_auroc(lab.y[rel], policy.score[rel], lab.relations[rel]).auroc)
        if rel.any()
        else None
    )
    out["auroc_within_dataset"] = _r(stratified_auroc(y, s, lab.datasets[rows]).auroc)
    out["ece"] = _r(expected_calibration_error(y, p))
    out["brier"] = _r(brier_score(y, p))
    return out


def evaluate_decisions(
    policy: HeldOutPolicy,
    retrieve: NDArray[np.bool_],
    table: BenchTable,
    *,
    always_accuracy: NDArray[np.float64],
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """Every metric of one policy's held-out decisions (over the policy's rows).

    Args:
        policy: the policy (its rows, scores and stage).
        retrieve: held-out retrieve decision per row of ``table``.
        table: both branches.
        always_accuracy: per-question accuracy of always retrieving (the paired reference).
        n_boot: bootstrap resamples for the intervals (0 = none).
        seed: bootstrap seed.
        thresholds: the cut each outer fold chose (reported).
    """
    rows = policy.rows
    outs = {k: v[rows] for k, v in outcomes(retrieve, table).items()}
    r = retrieve[rows].astype(np.float64)
    oracle_rate = 1.0 - float(table.cb_correct[rows].mean())
    seconds = wall_seconds(retrieve, table, policy)[rows]
    gated = policy.family not in ("baseline",)
    lm_calls = 1.0 + r.mean() if gated else 1.0
    diff = outs["accuracy"] - always_accuracy[rows]
    out: dict[str, Any] = {
        "name": policy.name,
        "family": policy.family,
        "stage": policy.stage,
        "n_features": len(policy.features),
        "n": int(rows.sum()),
        "accuracy": _ci(outs["accuracy"], n_boot, seed),
        "em": _r(float(outs["em"].mean())),
        "f1": _r(float(outs["f1"].mean())),
        "retrieval_rate": _r(float(r.mean())),
        "retriever_calls_per_question": _r(float(r.mean())),
        "lm_calls_per_question": _r(lm_calls),
        "savings_efficiency": _r((1.0 - r.mean()) / (1.0 - oracle_rate))
        if oracle_rate < 1.0
        else None,
        "accuracy_minus_always": _ci(diff, n_boot, seed),
        "mean_seconds_per_question": _r(float(seconds.mean())),
        "total_seconds": _r(float(seconds.sum()), 2),
    }
    if thresholds:
        out["thresholds_per_fold"] = [_r(t) for t in thresholds]
    out.update(ranking_metrics(policy, table, rows, n_boot, seed))
    datasets = table.labelled.datasets
    acc = outcomes(retrieve, table)["accuracy"]
    per: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(datasets[rows].tolist()):
        m = rows & (datasets == name)
        per[str(name)] = {
            "n": int(m.sum()),
            "accuracy": _r(float(acc[m].mean())),
            "retrieval_rate": _r(float(retrieve[m].mean())),
            "auroc": None
            if policy.score is None
            else _r(auroc(table.cb_correct[m], policy.score[m])),
        }
    out["per_dataset"] = per
    return out


def random_at_rate(
    rate: float,
    table: BenchTable,
    *,
    always_accuracy: NDArray[np.float64],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Random gating at ``rate``: expected outcomes (no draw noise), same cost columns."""
    expected = rate * table.rag_correct + (1.0 - rate) * table.cb_correct
    seconds = rate * table.retrieval_seconds() + (1.0 - rate) * table.closed_book_seconds()
    oracle_rate = 1.0 - float(table.cb_correct.mean())
    return {
        "name": f"random at {rate:.3f}",
        "family": "baseline",
        "stage": "none",
        "n_features": 0,
        "n": table.n,
        "accuracy": _ci(expected.astype(np.float64), n_boot, seed),
        "em": _r(float(np.mean(rate * table.rag_em + (1 - rate) * table.cb_em))),
        "f1": _r(float(np.mean(rate * table.rag_f1 + (1 - rate) * table.cb_f1))),
        "retrieval_rate": _r(rate),
        "retriever_calls_per_question": _r(rate),
        "lm_calls_per_question": _r(1.0 + rate),
        "savings_efficiency": _r((1.0 - rate) / (1.0 - oracle_rate)) if oracle_rate < 1 else None,
        "accuracy_minus_always": _ci(expected - always_accuracy, n_boot, seed),
        "mean_seconds_per_question": _r(float(seconds.mean())),
        "total_seconds": _r(float(seconds.sum()), 2),
    }


def per_group(
    retrieve: NDArray[np.bool_],
    table: BenchTable,
    groups: NDArray[np.str_],
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, dict[str, Any]]:
    """Accuracy and retrieval rate per group (dataset, relation, popularity bucket)."""
    acc = outcomes(retrieve, table)["accuracy"]
    keep = np.ones(table.n, dtype=bool) if mask is None else mask
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(groups[keep].tolist()):
        m = keep & (groups == name)
        out[str(name)] = {
            "n": int(m.sum()),
            "accuracy": _r(float(acc[m].mean())),
            "retrieval_rate": _r(float(retrieve[m].mean())),
        }
    return out


def summarize_branches(table: BenchTable) -> dict[str, Mapping[str, Any]]:
    """Per dataset (and overall): closed-book, retrieval and oracle accuracy, evidence recall."""
    lab = table.labelled
    out: dict[str, Mapping[str, Any]] = {}
    names = [*dict.fromkeys(lab.datasets.tolist()), "all"]
    for name in names:
        m = np.ones(table.n, dtype=bool) if name == "all" else lab.datasets == name
        ev = table.evidence_hit[m]
        cb, rag = lab.y[m], table.rag_correct[m]
        out[name] = {
            "n": int(m.sum()),
            "closed_book_accuracy": _r(float(cb.mean())),
            "closed_book_em": _r(float(table.cb_em[m].mean())),
            "closed_book_f1": _r(float(table.cb_f1[m].mean())),
            "retrieval_accuracy": _r(float(rag.mean())),
            "retrieval_em": _r(float(table.rag_em[m].mean())),
            "retrieval_f1": _r(float(table.rag_f1[m].mean())),
            "oracle_accuracy": _r(float(np.maximum(cb, rag).mean())),
            "oracle_retrieval_rate": _r(1.0 - float(cb.mean())),
            "closed_book_right_retrieval_wrong": int(np.sum((cb == 1) & (rag == 0))),
            "closed_book_wrong_retrieval_right": int(np.sum((cb == 0) & (rag == 1))),
            "evidence_in_prompt": _r(float(np.nanmean(ev))) if np.isfinite(ev).any() else None,
            "questions_with_evidence": int(np.isfinite(ev).sum()),
            "mean_closed_book_seconds": _r(float(table.closed_book_seconds()[m].mean())),
            "mean_retrieval_seconds": _r(float(table.retrieval_seconds()[m].mean())),
            "mean_plain_rag_seconds": _r(float(table.plain_rag_seconds()[m].mean())),
        }
    return out
