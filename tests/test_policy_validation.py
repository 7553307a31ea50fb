import math

import pytest

from knowgate.errors import PolicyError
from knowgate.policy import ThresholdPolicy


@pytest.fixture
def policy():
    return ThresholdPolicy("next_token_max_prob", "higher_is_known", 0.5)


def test_missing_feature_is_named(policy):
    with pytest.raises(PolicyError, match=r"next_token_max_prob.*missing"):
        policy.decide({"other": 1.0})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_feature_is_named(policy, bad):
    with pytest.raises(PolicyError, match="next_token_max_prob"):
        policy.decide({"next_token_max_prob": bad})


@pytest.mark.parametrize("bad", ["0.4", None, True, [0.4]])
def test_non_numeric_feature_is_rejected(policy, bad):
    with pytest.raises(PolicyError, match="must be a number"):
        policy.decide({"next_token_max_prob": bad})


def test_features_must_be_a_mapping(policy):
    with pytest.raises(PolicyError, match="mapping"):
        policy.decide([("next_token_max_prob", 0.3)])
    with pytest.raises(PolicyError, match="sequence of feature mappings"):
        policy.decide_batch({"next_token_max_prob": 0.3})
    with pytest.raises(PolicyError, match="row 1"):
        policy.decide_batch([{"next_token_max_prob": 0.3}, 0.3])


def test_batch_is_validated_before_any_decision(policy):
    with pytest.raises(PolicyError, match="missing"):
        policy.decide_batch([{"next_token_max_prob": 0.9}, {}])
    assert policy.decide_batch([]) == []


def test_numpy_scalars_are_accepted(policy):
    import numpy as np

    assert policy.decide({"next_token_max_prob": np.float32(0.2)}).retrieve is True
    assert policy.decide({"next_token_max_prob": np.int64(1)}).retrieve is False
