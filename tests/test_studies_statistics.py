"""Separation statistics on hand-built arrays whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from knowgate.errors import InputError
from knowgate.studies.statistics import (
    cluster_bootstrap_weights,
    compare_feature_sets,
    cross_fitted_scores,
    mean_interval,
    separation,
    split_half_selection,
    weighted_auroc,
)


def test_auroc_counts_pairs_by_hand() -> None:
    # positives {2, 4}, negatives {1, 3}: pairs 2>1, 2<3, 4>1, 4>3 -> 3 of 4 won
    sep = separation([1, 2, 3, 4], [0, 1, 0, 1], n_boot=0)
    assert sep.auroc.estimate == pytest.approx(0.75)
    # a tie counts one half: positives {1, 2}, negatives {1, 0}: 1=1, 1>0, 2>1, 2>0 -> 3.5 / 4
    assert separation([1, 2, 1, 0], [1, 1, 0, 0], n_boot=0).auroc.estimate == pytest.approx(0.875)
    assert separation([1, 2, 3, 4], [0, 0, 1, 1], n_boot=0).auroc.estimate == 1.0
    assert separation([1, 2, 3, 4], [1, 1, 0, 0], n_boot=0).auroc.estimate == 0.0


def test_cohens_d_and_relative_shift_by_hand() -> None:
    # positives 1, 2, 3 (mean 2, SD 1); negatives 4, 5, 6 (mean 5, SD 1): pooled SD 1
    sep = separation([1, 2, 3, 4, 5, 6], [1, 1, 1, 0, 0, 0], n_boot=0)
    assert sep.cohens_d.estimate == pytest.approx(-3.0)
    assert sep.relative_shift.estimate == pytest.approx((5 - 2) / 2)
    assert sep.mean_positive == pytest.approx(2.0)
    assert sep.mean_negative == pytest.approx(5.0)
    # unequal SDs: positives 0, 4 (var 8), negatives 1, 2, 3 (var 1): pooled var (8 + 2) / 3
    sep = separation([0, 4, 1, 2, 3], [1, 1, 0, 0, 0], n_boot=0)
    assert sep.cohens_d.estimate == pytest.approx(0.0)
    sep = separation([2, 6, 1, 2, 3], [1, 1, 0, 0, 0], n_boot=0)
    assert sep.cohens_d.estimate == pytest.approx((4 - 2) / np.sqrt(10 / 3))


def test_weighted_auroc_matches_sklearn_sample_weights() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=60), 1)  # rounding makes ties
    labels = rng.random(60) < 0.4
    weights = rng.integers(0, 4, size=(25, 60))
    fast = weighted_auroc(scores, labels, weights)
    for row, value in zip(weights, fast, strict=True):
        expected = roc_auc_score(labels, scores, sample_weight=row)
        assert value == pytest.approx(expected)


def test_weighted_auroc_is_nan_without_a_group() -> None:
    weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = weighted_auroc([1, 2, 3, 4], [0, 0, 1, 1], weights)
    assert np.isnan(out[0]) and out[1] == 1.0


def test_cluster_bootstrap_resamples_whole_clusters() -> None:
    groups = np.repeat(np.arange(10), 3)
    w = cluster_bootstrap_weights(groups, 30, 200, seed=1)
    assert w.shape == (200, 30)
    # members of a cluster are always drawn together, and a resample has as many clusters
    assert (w.reshape(200, 10, 3) == w.reshape(200, 10, 3)[:, :, :1]).all()
    assert (w.sum(axis=1) == 30).all()
    np.testing.assert_array_equal(w, cluster_bootstrap_weights(groups, 30, 200, seed=1))


def test_intervals_cover_and_exclude_chance_as_they_should() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([True, False], 300)
    strong = np.where(labels, 1.0, 0.0) + rng.normal(scale=0.5, size=600)
    sep = separation(strong, labels, n_boot=500, seed=0)
    assert sep.auroc.low > 0.85 and sep.auroc.low <= sep.auroc.estimate <= sep.auroc.high
    assert sep.cohens_d.low > 1.0
    noise = rng.normal(size=600)
    sep = separation(noise, labels, n_boot=500, seed=0)
    assert sep.auroc.low < 0.5 < sep.auroc.high
    assert sep.cohens_d.low < 0.0 < sep.cohens_d.high


def test_clustered_intervals_are_wider_for_correlated_observations() -> None:
    rng = np.random.default_rng(5)
    # 40 clusters of 10 identical copies: as informative as 40 observations, not 400
    base = rng.normal(size=40)
    labels_c = rng.random(40) < 0.5
    scores = np.repeat(base + 0.5 * labels_c, 10)
    labels = np.repeat(labels_c, 10)
    groups = np.repeat(np.arange(40), 10)
    naive = separation(scores, labels, n_boot=500, seed=0)
    clustered = separation(scores, labels, groups=groups, n_boot=500, seed=0)
    naive_width = naive.auroc.high - naive.auroc.low
    clustered_width = clustered.auroc.high - clustered.auroc.low
    assert clustered_width > 2 * naive_width


def test_separation_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="both groups"):
        separation([1, 2, 3], [1, 1, 1], n_boot=0)
    with pytest.raises(InputError, match="non-finite"):
        separation([1, np.nan, 3], [1, 0, 1], n_boot=0)
    with pytest.raises(InputError, match="equally long"):
        separation([1, 2, 3], [1, 0], n_boot=0)


def test_cross_fitting_respects_groups() -> None:
    # every group has its own random label and a feature that identifies the group: a model
    # that saw the group memorises it, one that did not can only guess
    rng = np.random.default_rng(2)
    n_groups, per = 60, 5
    groups = np.repeat(np.arange(n_groups), per)
    group_labels = rng.permutation(np.arange(n_groups) % 2 == 0)
    labels = group_labels[groups]
    signature = rng.normal(size=(n_groups, 20))
    x = signature[groups] + 0.01 * rng.normal(size=(n_groups * per, 20))
    scores = cross_fitted_scores(x, labels, groups, folds=5, seed=0, c=10.0)
    assert abs(roc_auc_score(labels, scores) - 0.5) < 0.15
    informative = np.column_stack([labels + rng.normal(scale=0.3, size=labels.size), x])
    scores = cross_fitted_scores(informative, labels, groups, folds=5, seed=0)
    assert roc_auc_score(labels, scores) > 0.9


def test_compare_feature_sets_finds_added_information() -> None:
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.random(n) < 0.5
    groups = np.arange(n) // 2
    weak = labels * 0.3 + rng.normal(size=n)
    strong = labels * 2.0 + rng.normal(size=n)
    gain = compare_feature_sets(weak, strong, labels, groups, folds=5, seed=0, n_boot=300)
    assert gain.extended.estimate > gain.base.estimate
    assert gain.gain.low > 0.1
    useless = rng.normal(size=(n, 3))
    same = compare_feature_sets(strong, useless, labels, groups, folds=5, seed=0, n_boot=300)
    assert same.gain.low < 0.0 < same.gain.high or abs(same.gain.estimate) < 0.02


def test_split_half_selection_reports_the_chosen_signal_out_of_sample() -> None:
    rng = np.random.default_rng(6)
    n = 400
    labels = np.arange(n) % 2 == 0
    groups = np.arange(n) // 2
    table = rng.normal(size=(n, 30))
    table[:, 17] = -2.0 * labels + rng.normal(size=n)  # lower on the positive group
    names = [f"s{j}" for j in range(30)]
    best = split_half_selection(table, labels, groups, names, seed=0, n_boot=200)
    assert best["signal"] == "s17"
    assert best["held_out"]["auroc"] < 0.2  # raw: the signal is lower for positives
    assert best["oriented_auroc"]["estimate"] > 0.8
    assert best["n_selection"] + best["n_report"] == n


def test_mean_interval() -> None:
    interval = mean_interval([0, 1, 1, 1], n_boot=0)
    assert interval.estimate == 0.75 and np.isnan(interval.low)
    interval = mean_interval(np.r_[np.zeros(100), np.ones(300)], n_boot=400, seed=0)
    assert interval.low < 0.75 < interval.high
