import numpy as np
import pytest

from knowgate.errors import PolicyError
from knowgate.policy import (
    PopularityPolicy,
    RetrievalBudget,
    ThresholdPolicy,
    build_policy,
)


def test_higher_is_known_cuts_below_value():
    policy = ThresholdPolicy("f", "higher_is_known", 0.5)
    assert policy.decide({"f": 0.49}).retrieve is True
    assert policy.decide({"f": 0.5}).retrieve is False
    assert policy.decide({"f": 0.9}).retrieve is False
    assert policy.decide({"f": 0.1}).threshold == 0.5
    assert policy.decide({"f": 0.1}).p_known is None


def test_lower_is_known_cuts_above_value():
    policy = ThresholdPolicy("entropy", "lower_is_known", 2.0)
    assert policy.decide({"entropy": 2.5}).retrieve is True
    assert policy.decide({"entropy": 1.0}).retrieve is False
    assert "entropy" in policy.decide({"entropy": 2.5}).reason


def test_fit_learns_direction_and_budget():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    x = -y + rng.normal(0, 0.1, 1000)  # lower = known, perfectly separable
    policy = ThresholdPolicy.fit(x, y, "f", RetrievalBudget(max_retrieval_rate=0.4))
    assert policy.direction == "lower_is_known"
    share = np.mean([d.retrieve for d in policy.decide_batch([{"f": v} for v in x])])
    assert share == pytest.approx(0.4, abs=1e-9)
    assert policy.training["n_samples"] == 1000


def test_with_threshold_keeps_feature_and_changes_id():
    policy = ThresholdPolicy("f", "higher_is_known", 0.5, model_id="m")
    moved = policy.with_threshold(0.8)
    assert moved.threshold == 0.8 and moved.feature == "f" and moved.model_id == "m"
    assert moved.policy_id != policy.policy_id
    assert moved.decide({"f": 0.6}).retrieve is True


def test_threshold_rejects_bad_arguments():
    with pytest.raises(PolicyError, match="direction"):
        ThresholdPolicy("f", "up", 0.5)
    with pytest.raises(PolicyError, match="feature name"):
        ThresholdPolicy("", "higher_is_known", 0.5)
    with pytest.raises(PolicyError, match="finite"):
        ThresholdPolicy("f", "higher_is_known", float("nan"))


def test_popularity_policy_reads_s_pop():
    policy = build_policy("popularity", value=1000)
    assert isinstance(policy, PopularityPolicy)
    assert policy.required_features == ("s_pop",)
    assert policy.decide({"s_pop": 150}).retrieve is True
    assert policy.decide({"s_pop": 25_000}).retrieve is False
    with pytest.raises(PolicyError, match="s_pop"):
        PopularityPolicy(feature="other")


def test_popularity_fit_budget():
    rng = np.random.default_rng(1)
    pop = 10 ** rng.uniform(1, 6, 500)
    y = (rng.random(500) < np.log10(pop) / 6).astype(int)
    policy = PopularityPolicy.fit_popularity(pop, y, RetrievalBudget(max_retrieval_rate=0.5))
    decisions = policy.decide_batch([{"s_pop": v} for v in pop])
    assert np.mean([d.retrieve for d in decisions]) == pytest.approx(0.5)
    assert policy.threshold == pytest.approx(np.median(pop), rel=0.05)


def test_build_threshold_by_name():
    policy = build_policy("threshold", feature="f", direction="higher_is_known", value=0.3)
    assert policy.decide({"f": 0.2}).retrieve is True
    with pytest.raises(PolicyError, match="invalid threshold parameters"):
        build_policy("threshold", feature="f", direction="higher_is_known")
