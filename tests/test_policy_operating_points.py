import numpy as np
import pytest

from knowgate.errors import ConfigError, PolicyError
from knowgate.policy import (
    ExpectedCost,
    FixedProbability,
    RetrievalBudget,
    TargetAccuracy,
    choose_threshold,
    parse_operating_point,
)
from knowgate.policy.operating_points import format_operating_point


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 0.73, 1.0])
def test_budget_retrieves_exactly_the_requested_share(rate):
    scores = np.random.default_rng(0).random(1000)  # distinct values
    choice = choose_threshold(RetrievalBudget(max_retrieval_rate=rate), scores, probabilistic=True)
    assert np.mean(scores < choice.threshold) == pytest.approx(rate)
    assert choice.retrieval_rate == pytest.approx(rate)


def test_budget_never_exceeds_share_on_ties():
    scores = np.repeat([0.1, 0.2, 0.3, 0.4], 25)
    choice = choose_threshold(RetrievalBudget(max_retrieval_rate=0.3), scores, probabilistic=True)
    assert np.mean(scores < choice.threshold) == pytest.approx(0.25)


def test_fixed_probability_needs_probabilities():
    scores = np.linspace(0, 1, 11)
    choice = choose_threshold(FixedProbability(threshold=0.35), scores, probabilistic=True)
    assert choice.threshold == 0.35
    assert choice.retrieval_rate == pytest.approx(4 / 11)
    with pytest.raises(PolicyError, match="probabilistic"):
        choose_threshold(FixedProbability(threshold=0.35), scores, probabilistic=False)


def test_expected_cost_bayes_threshold_for_probabilities():
    scores = np.linspace(0, 1, 101)
    labels = (scores > 0.5).astype(int)
    op = ExpectedCost(retrieval_cost=1.0, wrong_answer_cost=4.0)
    choice = choose_threshold(op, scores, labels, probabilistic=True)
    assert choice.threshold == pytest.approx(0.75)  # skip when (1 - p) * 4 < 1
    assert "mean_cost_on_calibration" in choice.details


def test_expected_cost_empirical_for_raw_scores():
    scores = np.arange(10.0)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    op = ExpectedCost(retrieval_cost=1.0, wrong_answer_cost=10.0)
    choice = choose_threshold(op, scores, labels, probabilistic=False)
    assert choice.threshold == 4.0  # retrieve the four wrong ones, skip the rest
    assert choice.details["mean_cost_on_calibration"] == pytest.approx(0.4)
    with pytest.raises(PolicyError, match="labels"):
        choose_threshold(op, scores, None, probabilistic=False)


def _population(rng, n):
    score = rng.random(n)
    labels = (rng.random(n) < score).astype(int)  # calibrated: P(correct | s) = s
    return score, labels


def test_target_accuracy_respects_its_bound_on_fresh_data():
    rng = np.random.default_rng(0)
    target, delta, trials = 0.8, 0.1, 60
    violations, accepted = 0, []
    for _ in range(trials):
        s, y = _population(rng, 1000)
        choice = choose_threshold(
            TargetAccuracy(target=target, delta=delta), s, y, probabilistic=True
        )
        # True accuracy of the accepted region [t, 1] under P(correct|s)=s, s ~ U(0,1).
        t = min(choice.threshold, 1.0)
        true_acc = (1 + t) / 2 if t < 1 else 1.0
        violations += true_acc < target
        accepted.append(1 - choice.retrieval_rate)
    assert violations <= delta * trials  # guarantee: P(violation) <= delta
    # ... and it is not trivially retrieving everything (the ideal share is 0.4)
    assert np.mean(accepted) > 0.2


def test_target_accuracy_on_empirical_holdout():
    rng = np.random.default_rng(1)
    s, y = _population(rng, 2000)
    choice = choose_threshold(TargetAccuracy(target=0.9), s, y, probabilistic=True)
    fresh_s, fresh_y = _population(rng, 200_000)
    keep = fresh_s >= choice.threshold
    assert fresh_y[keep].mean() >= 0.9
    assert choice.details["accuracy_lower_bound"] >= 0.9
    assert choice.accuracy_without_retrieval >= 0.9


def test_target_accuracy_unreachable_retrieves_always():
    s = np.linspace(0, 1, 50)
    y = np.zeros(50, dtype=int)
    choice = choose_threshold(TargetAccuracy(target=0.9), s, y, probabilistic=True)
    assert choice.retrieval_rate == 1.0 and choice.threshold == 1.0
    assert "retrieve always" in choice.details["note"]
    with pytest.raises(PolicyError, match="use the 'always' policy"):
        choose_threshold(TargetAccuracy(target=0.9), s, y, probabilistic=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probability:0.4", FixedProbability(threshold=0.4)),
        ("budget:0.3", RetrievalBudget(max_retrieval_rate=0.3)),
        ("accuracy:0.9", TargetAccuracy(target=0.9)),
        ("accuracy:0.9:0.01", TargetAccuracy(target=0.9, delta=0.01)),
        ("cost:1:10", ExpectedCost(retrieval_cost=1, wrong_answer_cost=10)),
    ],
)
def test_parse_operating_point(text, expected):
    op = parse_operating_point(text)
    assert op == expected
    assert parse_operating_point(format_operating_point(op)) == op


@pytest.mark.parametrize(
    "text", ["budget", "budget:1.5", "often:0.3", "cost:1", "accuracy:x", "probability:0.1:0.2"]
)
def test_parse_operating_point_rejects(text):
    with pytest.raises(ConfigError):
        parse_operating_point(text)


def test_choose_threshold_rejects_bad_inputs():
    op = RetrievalBudget(max_retrieval_rate=0.5)
    with pytest.raises(PolicyError, match="zero"):
        choose_threshold(op, [], probabilistic=True)
    with pytest.raises(PolicyError, match="NaN"):
        choose_threshold(op, [0.1, float("nan")], probabilistic=True)
    with pytest.raises(PolicyError, match="labels"):
        choose_threshold(op, [0.1, 0.2], [1], probabilistic=True)
    with pytest.raises(PolicyError, match="0/1"):
        choose_threshold(op, [0.1, 0.2], [1, 2], probabilistic=True)
