import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from knowgate.errors import InputError
from knowgate.evaluation.metrics import (
    auroc,
    auroc_with_direction,
    bootstrap_ci,
    brier_score,
    expected_calibration_error,
    popularity_bucket,
    reliability_bins,
    stratified_auroc,
)


def test_auroc_and_direction():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc_with_direction(y, [4, 3, 2, 1]) == (1.0, "lower_is_known")
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    with pytest.raises(InputError):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(InputError):
        auroc([0, 2], [0.1, 0.2])


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        s = rng.integers(0, 10, 200).astype(float)  # many ties
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ece_known_values():
    y = np.array([1, 0, 1, 0])
    assert expected_calibration_error(y, [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([1, 1], [0.0, 0.0]) == pytest.approx(1.0)
    # Two bins: p=0.1 with accuracy 0 (gap 0.1), p=0.9 with accuracy 1 (gap 0.1).
    assert expected_calibration_error([0, 0, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.1)


def test_reliability_bins_match_sklearn():
    rng = np.random.default_rng(0)
    p = rng.random(2000)
    y = (rng.random(2000) < p**1.5).astype(int)
    bins = reliability_bins(y, p, 15)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    used = bins.count > 0
    np.testing.assert_allclose(bins.accuracy[used], prob_true)
    np.testing.assert_allclose(bins.mean_confidence[used], prob_pred)
    assert bins.count.sum() == 2000
    with pytest.raises(InputError):
        reliability_bins([0, 1], [0.5, 1.5])


def test_brier():
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0
    assert brier_score([1, 0], [0.5, 0.5]) == 0.25


def test_stratified_auroc_ignores_between_group_separation():
    # Within each group the score is random; between groups it tracks the base rate.
    rng = np.random.default_rng(1)
    groups = np.repeat(["easy", "hard"], 500)
    y = np.concatenate([rng.random(500) < 0.8, rng.random(500) < 0.1]).astype(int)
    score = np.where(groups == "easy", 1.0, 0.0) + rng.normal(0, 0.01, 1000)
    assert auroc(y, score) > 0.8
    strat = stratified_auroc(y, score, groups)
    assert abs(strat.auroc - 0.5) < 0.08
    assert strat.n_groups == 2 and set(strat.groups) == {"easy", "hard"}


def test_stratified_auroc_perfect_and_single_class_groups():
    y = np.array([0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.2, 0.3, 0.5, 0.6])
    g = ["a", "a", "b", "b", "c", "c"]
    strat = stratified_auroc(y, s, g)
    assert strat.auroc == 1.0 and strat.n_groups == 2 and strat.n_pairs == 2
    assert math.isnan(strat.groups["c"].auroc)


def test_bootstrap_ci_contains_estimate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(0, 1, 400)
    ci = bootstrap_ci(auroc, y, s, n_resamples=300)
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low < 0.2


@pytest.mark.parametrize(
    ("pop", "bucket"),
    [(6, "<100"), (100, "100-1k"), (999.9, "100-1k"), (5000, "1k-10k"), (10**5, ">=100k")],
)
def test_popularity_buckets(pop, bucket):
    assert popularity_bucket(pop) == bucket
    assert popularity_bucket(None) is None
