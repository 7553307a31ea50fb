"""The null check: cross-fitting on permuted labels must not rank, and a leak must show."""

from __future__ import annotations

import numpy as np
import pytest

from bench_helpers import synthetic_records
from knowgate.evaluation.bench.null_check import null_aurocs, null_check, permute_within
from knowgate.evaluation.bench.policies import PolicyCandidate, candidates
from knowgate.evaluation.bench.table import BenchTable, build_bench_table
from knowgate.evaluation.metrics import auroc_variance, stratified_auroc, stratified_auroc_variance


@pytest.fixture(scope="module")
def table() -> BenchTable:
    closed, retrieval = synthetic_records()
    return build_bench_table(closed, retrieval, model_id="m")


def test_permuting_within_datasets_keeps_each_dataset_base_rate() -> None:
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    strata = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    out = permute_within(y, strata, np.random.default_rng(3))
    assert out[:4].sum() == 2 and out[4:].sum() == 1
    assert out is not y and sorted(out) == sorted(y)


def test_hanley_mcneil_variance_at_one_half_is_the_mann_whitney_null() -> None:
    # (n1 + n0 + 1) / (12 n1 n0) for 30 positives and 70 negatives
    assert auroc_variance(0.5, 30, 70) == pytest.approx(101 / (12 * 30 * 70))
    # two groups with equal pair counts and AUROC 0.5: half of one group's variance
    y = np.array([1, 0, 0, 1, 0, 0])
    s = np.array([0.5, 0.9, 0.1, 0.5, 0.9, 0.1])
    within = stratified_auroc(y, s, ["g", "g", "g", "h", "h", "h"])
    assert within.auroc == pytest.approx(0.5)
    assert stratified_auroc_variance(within) == pytest.approx(auroc_variance(0.5, 1, 2) / 2)


def test_the_null_variance_ignores_how_far_the_estimate_drifted() -> None:
    # one group, 3 positives ranked above all 7 negatives: AUROC 1, Hanley-McNeil variance 0
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    s = np.arange(10, 0, -1, dtype=float)
    within = stratified_auroc(y, s, ["g"] * 10)
    assert within.auroc == 1.0
    assert stratified_auroc_variance(within) == pytest.approx(0.0)
    # under the null: (n1 + n0 + 1) / (12 n1 n0) = 11 / 252, by hand
    assert stratified_auroc_variance(within, at=0.5) == pytest.approx(11 / 252)
    # two groups with 3x7 and 2x8 pairs: weights 21/37 and 16/37 on each null variance
    y2 = np.concatenate([y, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    s2 = np.concatenate([s, np.arange(10, dtype=float)])
    two = stratified_auroc(y2, s2, ["g"] * 10 + ["h"] * 10)
    expected = (21 / 37) ** 2 * 11 / 252 + (16 / 37) ** 2 * 11 / (12 * 2 * 8)
    assert stratified_auroc_variance(two, at=0.5) == pytest.approx(expected)


def test_main_policies_do_not_rank_permuted_labels(table) -> None:
    main = candidates(table, ["fused", "popularity"])
    check = null_check(table, main, folds=3, seed=0)
    assert set(check.policies) == {c.name for c in main}
    for policy in check.policies.values():
        assert len(policy.folds) == 3
        assert all(f.low < 0.5 < f.high for f in policy.folds)
    assert check.passed


def test_the_same_statistic_sees_the_real_signal(table) -> None:
    """Against the true labels the informative sets fail the null: passing it is informative."""
    main = [c for c in candidates(table, ["fused"]) if c.name.startswith("uncertainty+sparsity")]
    check = null_aurocs(table, main, table.labelled.y, folds=3, seed=0)
    assert all(p.contains_half is False for p in check.policies.values())


def test_a_leak_fails_the_check(table) -> None:
    """A feature that carries the (permuted) label is a leak; the check must flag it."""
    lab = table.labelled
    y = permute_within(lab.y, lab.datasets, np.random.default_rng(0))
    noise = np.random.default_rng(1).normal(size=table.n)
    leaky = PolicyCandidate(
        "leaky",
        "fused",
        "prefill",
        ("leak",),
        (y + 0.8 * noise)[:, None],
        np.ones(table.n, dtype=bool),
    )
    honest = next(c for c in candidates(table, ["fused"]) if c.name == "uncertainty (prefill)")
    check = null_aurocs(table, [honest, leaky], y, folds=3, seed=0)
    assert check.policies["leaky"].contains_half is False
    assert all(f.low > 0.5 for f in check.policies["leaky"].folds)
    assert check.policies["uncertainty (prefill)"].contains_half is True
    assert not check.passed
