import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from knowgate.errors import PolicyError
from knowgate.evaluation.cross_fitting import cross_fit, outer_splits
from knowgate.evaluation.metrics import auroc, expected_calibration_error
from knowgate.policy import (
    FixedProbability,
    FusedPolicy,
    RetrievalBudget,
    TargetAccuracy,
    fit_calibrator,
    fit_fused,
)

NAMES = ["signal_a", "signal_b", "noise"]


def _logistic_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    logit = 1.6 * x[:, 0] - 1.0 * x[:, 1] - 1.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


def _rows(x):
    return [dict(zip(NAMES, r, strict=True)) for r in x]


def _cross_fitted(x, y, names, method):
    splits = outer_splits(y, None, folds=5, seed=0)
    return cross_fit(x, y, None, names, splits, calibration=method)


def test_perfectly_separable_feature_gives_auroc_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    x = np.column_stack([y + rng.uniform(0.05, 0.9, 600), rng.normal(size=600)])
    cf = _cross_fitted(x, y, ["sep", "noise"], "isotonic")
    assert auroc(y, cf.score) == 1.0
    assert auroc(y, cf.p_known) == 1.0


@pytest.mark.parametrize("method", ["isotonic", "sigmoid", "temperature", "none"])
def test_fused_is_calibrated_on_held_out_folds(method):
    x, y = _logistic_data()
    cf = _cross_fitted(x, y, NAMES, method)
    assert auroc(y, cf.score) > 0.8
    assert expected_calibration_error(y, cf.p_known) < 0.05
    assert set(np.unique(cf.fold)) == set(range(5))


def test_calibration_fixes_a_miscalibrated_score():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-logits / 3))).astype(int)  # true temperature 3
    raw_ece = expected_calibration_error(y, 1 / (1 + np.exp(-logits)))
    for method in ("isotonic", "sigmoid", "temperature"):
        cal = fit_calibrator(method, logits, y)
        assert expected_calibration_error(y, cal.apply(logits)) < raw_ece / 2
    assert fit_calibrator("temperature", logits, y).temperature == pytest.approx(3, rel=0.15)


def test_isotonic_breakpoints_reproduce_sklearn():
    rng = np.random.default_rng(4)
    z = rng.normal(size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-2 * z))).astype(int)
    cal = fit_calibrator("isotonic", z, y)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z, y)
    probe = np.linspace(-4, 4, 301)
    # fitted calibrators blend in a millionth of sigmoid(logit) to break the steps' ties
    np.testing.assert_allclose(cal.apply(probe), ref.predict(probe), atol=1.01e-6)
    assert np.all(np.diff(cal.apply(probe)) > 0)
    untied = cal.model_copy(update={"tie_break": 0.0})
    np.testing.assert_allclose(untied.apply(probe), ref.predict(probe), atol=1e-12)


def test_fit_calibrator_rejects():
    with pytest.raises(PolicyError, match="unknown calibration"):
        fit_calibrator("beta", [0.1, 0.2], [0, 1])
    with pytest.raises(PolicyError, match="both"):
        fit_calibrator("isotonic", [0.1, 0.2], [1, 1])
    with pytest.raises(PolicyError, match="NaN"):
        fit_calibrator("sigmoid", [0.1, float("nan")], [0, 1])


def test_fitted_policy_decides_by_threshold():
    x, y = _logistic_data()
    fit = fit_fused(x, y, NAMES, operating_point=FixedProbability(threshold=0.4), model_id="m")
    policy = fit.policy
    assert policy.required_features == tuple(NAMES)
    assert policy.policy_id.startswith("fused-v1:m:")
    decisions = policy.decide_batch(_rows(x[:200]))
    for d in decisions:
        assert d.retrieve == (d.p_known < 0.4)
        assert d.threshold == 0.4
    assert policy.decide(_rows(x[:1])[0]) == decisions[0]
    strict = policy.with_threshold(0.9)
    assert strict.policy_id != policy.policy_id
    assert sum(d.retrieve for d in strict.decide_batch(_rows(x[:200]))) >= sum(
        d.retrieve for d in decisions
    )
    with pytest.raises(PolicyError):
        policy.with_threshold(1.2)


def test_fused_budget_operating_point_on_calibration_data():
    x, y = _logistic_data()
    fit = fit_fused(
        x, y, NAMES, calibration="sigmoid", operating_point=RetrievalBudget(max_retrieval_rate=0.6)
    )
    assert fit.threshold_choice.retrieval_rate == pytest.approx(0.6, abs=1e-3)
    share = np.mean([d.retrieve for d in fit.policy.decide_batch(_rows(x))])
    assert share == pytest.approx(0.6, abs=0.03)  # final model vs out-of-fold scores


def test_fused_target_accuracy_uses_a_holdout_and_holds_on_fresh_data():
    x, y = _logistic_data(n=4000, seed=5)
    fit = fit_fused(x, y, NAMES, operating_point=TargetAccuracy(target=0.75, delta=0.05))
    assert fit.policy.training["n_threshold_samples"] < fit.policy.training["n_samples"]
    assert fit.policy.threshold < 1.0  # a cut was found (1 would mean "retrieve always")
    fresh_x, fresh_y = _logistic_data(n=50_000, seed=6)
    keep = ~np.array([d.retrieve for d in fit.policy.decide_batch(_rows(fresh_x))])
    assert keep.sum() > 100
    assert fresh_y[keep].mean() >= 0.75


def test_groups_never_straddle_folds():
    _, y = _logistic_data(n=400)
    groups = np.repeat(np.arange(200), 2)
    from knowgate.policy.linear import make_splits

    for train, test in make_splits(y, groups):
        assert not set(groups[train]) & set(groups[test])


def test_fit_rejects_bad_input():
    x, y = _logistic_data(n=100)
    with pytest.raises(PolicyError, match="2 correct"):
        fit_fused(x, np.zeros(100, dtype=int), NAMES)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(PolicyError, match="signal_b"):
        fit_fused(bad, y, NAMES)
    with pytest.raises(PolicyError, match="feature names"):
        fit_fused(x, y, NAMES[:2])
    with pytest.raises(PolicyError, match="labels"):
        fit_fused(x, y[:50], NAMES)


def test_fused_p_known_validates_features():
    x, y = _logistic_data(n=300)
    policy = fit_fused(x, y, NAMES).policy
    assert isinstance(policy, FusedPolicy)
    with pytest.raises(PolicyError, match="noise"):
        policy.decide({"signal_a": 0.1, "signal_b": 0.2})
    p = policy.p_known(_rows(x[:5]))
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))


def test_threshold_one_always_retrieves_and_zero_never():
    x, y = _logistic_data(n=500)
    policy = fit_fused(x, y, NAMES).policy
    rows = _rows(x)
    assert all(d.retrieve for d in policy.with_threshold(1.0).decide_batch(rows))
    assert not any(d.retrieve for d in policy.with_threshold(0.0).decide_batch(rows))


def test_unreachable_target_accuracy_gives_retrieve_always():
    x, y = _logistic_data(n=600)
    fit = fit_fused(x, y, NAMES, operating_point=TargetAccuracy(target=0.99, delta=0.01))
    assert fit.policy.threshold == 1.0
    assert all(d.retrieve for d in fit.policy.decide_batch(_rows(x)))
