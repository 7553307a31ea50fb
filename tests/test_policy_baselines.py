import numpy as np
import pytest

from knowgate.errors import PolicyError
from knowgate.policy import (
    AlwaysRetrieve,
    NeverRetrieve,
    OraclePolicy,
    RandomRetrieve,
    build_policy,
)


def test_always_and_never_ignore_features():
    always, never = AlwaysRetrieve(), NeverRetrieve()
    assert always.decide({}).retrieve is True
    assert never.decide({"anything": 1.0}).retrieve is False
    assert [d.retrieve for d in always.decide_batch([{}, {}, {}])] == [True] * 3
    assert never.decide({}).p_known is None
    assert always.model_id is None and always.required_features == ()
    with pytest.raises(PolicyError, match="no threshold"):
        always.with_threshold(0.3)


def test_random_rate_is_respected_and_reproducible():
    policy = RandomRetrieve(rate=0.3, seed=7)
    draws = [d.retrieve for d in policy.decide_batch([{}] * 20_000)]
    assert abs(np.mean(draws) - 0.3) < 0.015
    again = [d.retrieve for d in RandomRetrieve(rate=0.3, seed=7).decide_batch([{}] * 20_000)]
    assert draws == again
    assert policy.decide({}).threshold == 0.3


def test_random_extremes_and_override():
    assert not any(d.retrieve for d in RandomRetrieve(0.0).decide_batch([{}] * 500))
    assert all(d.retrieve for d in RandomRetrieve(1.0).decide_batch([{}] * 500))
    lowered = RandomRetrieve(0.9, seed=1).with_threshold(0.1)
    assert lowered.rate == 0.1 and lowered.seed == 1
    assert lowered.policy_id != RandomRetrieve(0.9, seed=1).policy_id


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.3", True])
def test_random_rejects_bad_rates(rate):
    with pytest.raises(PolicyError):
        RandomRetrieve(rate=rate)


def test_random_rejects_bad_seed():
    with pytest.raises(PolicyError, match="seed"):
        RandomRetrieve(0.5, seed=-1)


def test_oracle_retrieves_exactly_when_wrong():
    oracle = OraclePolicy()
    decisions = oracle.decide_batch([{"oracle_correct": v} for v in (1, 0, 1.0, 0.0)])
    assert [d.retrieve for d in decisions] == [False, True, False, True]
    assert [d.p_known for d in decisions] == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(PolicyError, match="oracle_correct"):
        oracle.decide({})


def test_build_policy_by_name():
    assert build_policy("always").policy_id == "always"
    assert build_policy("never").policy_id == "never"
    assert build_policy("random", rate=0.2, seed=3).policy_id == "random:rate=0.2:seed=3"
    assert build_policy("oracle").required_features == ("oracle_correct",)
    with pytest.raises(PolicyError, match="unknown policy"):
        build_policy("sometimes")
    with pytest.raises(PolicyError, match="no parameters"):
        build_policy("always", rate=0.3)
    with pytest.raises(PolicyError, match="unknown random-policy parameter"):
        build_policy("random", rte=0.3)
    with pytest.raises(PolicyError, match="must be fitted"):
        build_policy("fused")
