import copy
import json

import numpy as np
import pytest

from knowgate.errors import PolicyError
from knowgate.policy import (
    ExpectedCost,
    PopularityPolicy,
    RandomRetrieve,
    RetrievalBudget,
    ThresholdPolicy,
    build_policy,
    fit_fused,
    load_policy,
    policy_from_artifact,
)

NAMES = ["next_token_entropy", "hidden_hoyer_last"]


@pytest.fixture(scope="module")
def fused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 2))
    y = (rng.random(800) < 1 / (1 + np.exp(-(2 * x[:, 0] - 1)))).astype(int)
    return fit_fused(
        x,
        y,
        NAMES,
        calibration="isotonic",
        operating_point=RetrievalBudget(max_retrieval_rate=0.7),
        model_id="smollm2-135m",
        prompt_config={"style": "chat"},
        training={"datasets": ["synthetic"]},
    ).policy


def _all_policies(fused):
    return [
        build_policy("always"),
        build_policy("never"),
        RandomRetrieve(0.25, seed=4),
        build_policy("oracle"),
        ThresholdPolicy(
            "next_token_entropy",
            "lower_is_known",
            1.5,
            model_id="smollm2-135m",
            operating_point=ExpectedCost(retrieval_cost=1, wrong_answer_cost=3),
        ),
        PopularityPolicy(value=2500.0),
        fused,
    ]


def test_every_policy_round_trips(tmp_path, fused):
    rng = np.random.default_rng(1)
    rows = [
        {
            "next_token_entropy": float(a),
            "hidden_hoyer_last": float(b),
            "s_pop": float(c),
            "oracle_correct": float(d),
        }
        for a, b, c, d in zip(
            rng.normal(size=50),
            rng.normal(size=50),
            10 ** rng.uniform(1, 5, 50),
            rng.integers(0, 2, 50),
            strict=True,
        )
    ]
    for policy in _all_policies(fused):
        path = tmp_path / f"{policy.name}.json"
        policy.save(path)
        loaded = load_policy(path)
        assert type(loaded) is type(policy)
        assert loaded.policy_id == policy.policy_id
        assert loaded.model_id == policy.model_id
        assert loaded.threshold == policy.threshold
        assert loaded.operating_point == policy.operating_point
        if policy.name != "random":  # random draws depend on the generator's position
            assert loaded.decide_batch(rows) == policy.decide_batch(rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_fused_artifact_is_human_readable(tmp_path, fused):
    path = tmp_path / "policy.json"
    fused.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "knowgate-policy" and data["format_version"] == 2
    assert data["model_id"] == "smollm2-135m"
    assert data["prompt_config"] == {"style": "chat"}
    assert data["required_features"] == NAMES
    assert data["params"]["calibrator"]["method"] == "isotonic"
    assert len(data["params"]["scorer"]["coefficients"]) == 2
    assert data["operating_point"] == {"kind": "budget", "max_retrieval_rate": 0.7}
    assert data["training"]["n_samples"] == 800
    assert data["training"]["datasets"] == ["synthetic"]
    assert "\n  " in path.read_text()  # indented


def test_model_mismatch_is_refused_unless_forced(tmp_path, fused):
    path = tmp_path / "policy.json"
    fused.save(path)
    assert load_policy(path, model_id="smollm2-135m").policy_id == fused.policy_id
    with pytest.raises(PolicyError, match="fitted for model 'smollm2-135m', not 'gemma3-270m'"):
        load_policy(path, model_id="gemma3-270m")
    assert load_policy(path, model_id="gemma3-270m", force=True).model_id == "smollm2-135m"
    assert build_policy("fused", path=path).policy_id == fused.policy_id
    with pytest.raises(PolicyError, match="not 'threshold'"):
        build_policy("threshold", path=path)


def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def setter(path, value):
        def apply(d):
            target = d
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value

        return apply

    return {
        "unknown version": (setter(["format_version"], 3), "unsupported policy format_version 3"),
        "version type": (setter(["format_version"], "1"), "format_version must be an integer"),
        "not a policy": (setter(["format"], "something"), "not a knowgate policy"),
        "unknown policy": (setter(["policy"], "magic"), "unknown policy 'magic'"),
        "unknown key": (setter(["extra"], 1), "extra: unknown key"),
        "missing params key": (
            lambda d: d["params"]["scorer"].pop("intercept"),
            "intercept",
        ),
        "missing threshold": (drop("threshold"), "needs a threshold"),
        "wrong type": (setter(["params", "scorer", "intercept"], "big"), "intercept"),
        "length mismatch": (
            setter(["params", "scorer", "coefficients"], [1.0]),
            "2 feature names but lengths",
        ),
        "zero scale": (setter(["params", "scorer", "scaler_scale"], [1.0, 0.0]), "positive"),
        "non-monotone x": (
            lambda d: d["params"]["calibrator"].update(
                x_thresholds=[0.0, -1.0], y_thresholds=[0.1, 0.2]
            ),
            "strictly increasing",
        ),
        "breakpoint counts": (
            setter(["params", "calibrator", "x_thresholds"], [0.0, 1.0]),
            "equally many",
        ),
        "decreasing y": (
            lambda d: d["params"]["calibrator"].update(
                x_thresholds=[0.0, 1.0, 2.0], y_thresholds=[0.1, 0.5, 0.3]
            ),
            "non-decreasing",
        ),
        "y out of range": (
            lambda d: d["params"]["calibrator"].update(
                x_thresholds=[0.0, 1.0], y_thresholds=[0.1, 1.5]
            ),
            r"\[0, 1\]",
        ),
        "unknown calibrator": (setter(["params", "calibrator", "method"], "beta"), "calibrator"),
        "threshold range": (setter(["threshold"], 1.5), "threshold"),
        "bad operating point": (
            setter(["operating_point"], {"kind": "budget", "max_retrieval_rate": 2}),
            "operating point",
        ),
        "features disagree": (
            setter(["required_features"], ["a", "b"]),
            "required_features",
        ),
        "edited by hand": (setter(["params", "scorer", "intercept"], 3.0), "does not match"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_artifacts_are_rejected(fused, case):
    mutate, message = _mutations()[case]
    data = copy.deepcopy(fused.to_dict())
    mutate(data)
    with pytest.raises(PolicyError, match=message):
        policy_from_artifact(data)


def test_bad_files_are_rejected(tmp_path, fused):
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "knowgate-policy", ')
    with pytest.raises(PolicyError, match="not a valid policy JSON"):
        load_policy(broken)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(PolicyError, match="JSON object"):
        load_policy(listing)
    nan = tmp_path / "nan.json"
    fused.save(nan)
    nan.write_text(nan.read_text().replace('"intercept": ', '"intercept": NaN, "x": ', 1))
    with pytest.raises(PolicyError, match="NaN"):
        load_policy(nan)


def test_save_refuses_non_json_training(tmp_path):
    policy = ThresholdPolicy("f", "higher_is_known", 0.1, training={"bad": float("nan")})
    with pytest.raises(PolicyError, match="strict JSON"):
        policy.save(tmp_path / "p.json")
    assert not list(tmp_path.iterdir())
