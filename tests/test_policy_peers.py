"""The field's gates and the hidden-state probe as named, saved and reloaded policies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knowgate.errors import PolicyError
from knowgate.policy import (
    FlarePolicy,
    ProbePolicy,
    RetrievalBudget,
    TargPolicy,
    VectorScorer,
    build_policy,
    fit_calibrator,
    load_policy,
    policy_from_artifact,
)
from knowgate.policy.fused import LinearScorer

VECTOR = "hidden_state_layer3_at_question_end"


def test_each_peer_retrieves_where_its_method_says() -> None:
    rows = [
        {
            "draft_mean_logit_margin": m,
            "draft_mean_entropy": e,
            "draft_min_prob": p,
            "sample_agreement": a,
            "self_report_p_yes": y,
        }
        for m, e, p, a, y in [
            (0.5, 2.0, 0.10, 0.2, 0.3),  # unsure everywhere
            (4.0, 0.1, 0.90, 1.0, 0.9),  # sure everywhere
            (1.9, 1.1, 0.25, 0.6, 0.5),  # just past every default cut
        ]
    ]
    cases = {
        # TARG on the margin: retrieve below the cut; on the entropy: above it
        ("targ", (("value", 2.0),)): [True, False, True],
        ("targ", (("feature", "draft_mean_entropy"), ("value", 1.0))): [True, False, True],
        # FLARE: any draft token below FlareChain's min_prob 0.2
        ("flare", ()): [True, False, False],
        # sampling consistency: fewer than half the samples agree
        ("sampling-consistency", ()): [True, False, False],
        # self-routing: P(yes) below 0.5 (0.5 itself answers from memory)
        ("self-routing", ()): [True, False, False],
    }
    for (name, params), expected in cases.items():
        policy = build_policy(name, **dict(params))
        assert [d.retrieve for d in policy.decide_batch(rows)] == expected, name
    assert build_policy("flare").value == 0.2
    entropy = build_policy("targ", feature="draft_mean_entropy", value=1.0)
    assert entropy.direction == "lower_is_known"


def test_peers_refuse_features_and_directions_their_method_does_not_use() -> None:
    with pytest.raises(PolicyError, match="flare"):
        build_policy("flare", feature="next_token_max_prob")
    with pytest.raises(PolicyError, match="higher_is_known"):
        build_policy("targ", direction="lower_is_known", value=1.0)
    with pytest.raises(PolicyError, match="value"):
        build_policy("targ")
    with pytest.raises(PolicyError, match="value"):
        build_policy("self-routing", value=1.5)


def test_targ_threshold_calibrated_to_a_budget() -> None:
    rng = np.random.default_rng(0)
    margin = rng.gamma(2.0, 1.0, 1000)
    known = (rng.random(1000) < 1 / (1 + np.exp(-(margin - 3)))).astype(int)
    policy = TargPolicy.fit(
        margin, known, "draft_mean_logit_margin", RetrievalBudget(max_retrieval_rate=0.7)
    )
    assert isinstance(policy, TargPolicy) and policy.direction == "higher_is_known"
    retrieve = [d.retrieve for d in policy.decide_batch([{policy.feature: m} for m in margin])]
    assert np.mean(retrieve) == pytest.approx(0.7, abs=1e-9)
    assert policy.value == pytest.approx(np.sort(margin)[700])


def _probe(seed: int = 0, d: int = 6) -> VectorScorer:
    rng = np.random.default_rng(seed)
    return VectorScorer(
        vector=VECTOR,
        scaler_mean=tuple(rng.normal(size=d)),
        scaler_scale=tuple(rng.uniform(0.5, 2.0, d)),
        coefficients=tuple(rng.normal(size=d)),
        intercept=-1.0,
    )


def test_probe_policy_reads_its_vector_and_decides_by_hand() -> None:
    probe = _probe()
    calibrator = fit_calibrator("sigmoid", [-2.0, -1.0, 0.0, 1.0, 2.0], [0, 0, 1, 0, 1])
    policy = ProbePolicy(probe, calibrator, threshold=0.4, model_id="m")
    assert policy.required_vectors == (VECTOR,) and policy.required_features == ()
    v = np.random.default_rng(5).normal(size=(4, 6))
    logit = ((v - np.array(probe.scaler_mean)) / np.array(probe.scaler_scale)) @ np.array(
        probe.coefficients
    ) - 1.0
    p = calibrator.apply(logit)
    decisions = policy.decide_batch([{VECTOR: row} for row in v])
    assert [d.p_known for d in decisions] == pytest.approx(list(p))
    assert [d.retrieve for d in decisions] == list(p < 0.4)
    with pytest.raises(PolicyError, match="vector signal"):
        policy.decide({"next_token_entropy": 1.0})
    with pytest.raises(PolicyError, match="must hold 6 numbers"):
        policy.decide({VECTOR: [1.0, 2.0]})
    with pytest.raises(PolicyError, match="NaN"):
        policy.decide({VECTOR: [np.nan] * 6})


def test_probe_with_a_combiner_stacks_its_logit_with_scalars() -> None:
    probe = _probe()
    combiner = LinearScorer(
        feature_names=("probe_logit", "next_token_max_prob"),
        scaler_mean=(0.0, 0.5),
        scaler_scale=(1.0, 0.25),
        coefficients=(0.5, 2.0),
        intercept=0.1,
    )
    calibrator = fit_calibrator("none", [0.0, 1.0], [0, 1])
    policy = ProbePolicy(probe, calibrator, combiner)
    assert policy.required_features == ("next_token_max_prob",)
    row = np.ones(6)
    z = probe.logits(row[None, :])[0]
    expected = 1 / (1 + np.exp(-(0.5 * z + 2.0 * (0.9 - 0.5) / 0.25 + 0.1)))
    decision = policy.decide({VECTOR: row, "next_token_max_prob": 0.9})
    assert decision.p_known == pytest.approx(expected)
    with pytest.raises(PolicyError, match="next_token_max_prob"):
        policy.decide({VECTOR: row})
    alone = combiner.model_copy(update={"feature_names": ("a", "next_token_max_prob")})
    with pytest.raises(PolicyError, match="probe_logit"):
        ProbePolicy(probe, calibrator, alone)


def test_peer_and_probe_artifacts_round_trip(tmp_path) -> None:
    calibrator = fit_calibrator("isotonic", np.linspace(-2, 2, 50), np.arange(50) % 3 == 0)
    policies = [
        build_policy("targ", value=1.5, model_id="smollm2-135m"),
        build_policy("flare"),
        build_policy("sampling-consistency", feature="sample_lexical_similarity", value=0.4),
        build_policy("self-routing", value=0.6),
        ProbePolicy(
            _probe(),
            calibrator,
            threshold=0.2,
            model_id="smollm2-135m",
            signal_config={"positions": ["prompt_end"], "vectors": [VECTOR]},
        ),
    ]
    for policy in policies:
        path = tmp_path / f"{policy.name}.json"
        policy.save(path)
        loaded = load_policy(path)
        assert type(loaded) is type(policy) and loaded.policy_id == policy.policy_id
        assert loaded.required_vectors == policy.required_vectors
    data = json.loads((tmp_path / "probe.json").read_text())
    assert data["format_version"] == 2 and data["required_vectors"] == [VECTOR]
    assert data["signal_config"]["vectors"] == [VECTOR]
    assert data["params"]["calibrator"]["tie_break"] > 0
    data["required_vectors"] = []
    with pytest.raises(PolicyError, match="required_vectors"):
        policy_from_artifact(data)


def test_version_1_files_still_load_with_their_ids(tmp_path) -> None:
    """Files written before format 2 (no vectors, no signal config, untied isotonic steps)."""
    calibrator = fit_calibrator("isotonic", np.linspace(-2, 2, 50), np.arange(50) % 3 == 0)
    old_calibrator = calibrator.model_copy(update={"tie_break": 0.0})
    scorer = LinearScorer(
        feature_names=("next_token_entropy",),
        scaler_mean=(1.0,),
        scaler_scale=(0.5,),
        coefficients=(-1.0,),
        intercept=0.0,
    )
    policy = build_policy("fused", scorer=scorer, calibrator=old_calibrator, threshold=0.3)
    data = policy.to_dict()
    data["format_version"] = 1
    for key in ("required_vectors", "signal_config"):
        data.pop(key)
    assert "tie_break" not in data["params"]["calibrator"]
    loaded = policy_from_artifact(data)
    assert loaded.policy_id == policy.policy_id
    data["signal_config"] = {"positions": ["prompt_end"]}
    with pytest.raises(PolicyError, match="format_version 2"):
        policy_from_artifact(data)
    shipped = load_policy(
        __import__("pathlib").Path(__file__).resolve().parents[1]
        / "configs"
        / "policies"
        / "smollm2-135m.json"
    )
    assert shipped.name == "fused"


def test_flare_policy_defaults_to_flarechain() -> None:
    assert FlarePolicy().value == 0.2
    assert FlarePolicy().decide({"draft_min_prob": 0.19}).retrieve
    assert not FlarePolicy().decide({"draft_min_prob": 0.2}).retrieve
