"""Signals are configuration: which signals, layers and positions, and what a policy adds."""

from __future__ import annotations

import numpy as np
import pytest

from knowgate.config import RouterConfig, load_config
from knowgate.errors import ConfigError, SignalError
from knowgate.signals import (
    ForwardCapture,
    PositionStates,
    SignalConfig,
    TokenStats,
    compute_features,
    compute_vectors,
    draft_features,
    feature_names,
    parse_vector_signal,
    vector_signal_name,
)
from knowgate.signals.question import compute_question_features


def _capture(draft: bool = False) -> ForwardCapture:
    rng = np.random.default_rng(0)
    layers = (0, 2, 4)
    one = TokenStats.from_lists([1.0], [np.log(0.5)], [0.2], [1.5])
    hidden = rng.normal(size=(3, 8)).astype(np.float32)
    mlp = rng.normal(size=(3, 12)).astype(np.float32)
    return ForwardCapture(
        layers=layers,
        num_layers=5,
        hidden=hidden,
        mlp=mlp,
        next_token=one,
        draft=TokenStats.from_lists([0.5, 2.0], [-0.1, -1.2], [0.8, 0.1], [3.0, 0.2])
        if draft
        else None,
        positions={
            "question_end": PositionStates(hidden + 1.0, mlp),
            "question_mean": PositionStates(hidden * 2.0, mlp),
        },
        question_states=rng.normal(size=(4, 8)).astype(np.float32),
    )


def test_question_features_come_from_the_same_computation() -> None:
    question = "Who wrote Hamlet in 1600?"
    meta = {"prop": "author"}
    plain = compute_features(_capture())
    assert not [n for n in plain if n.startswith("question_")]  # off by default
    with_q = compute_features(
        _capture(), SignalConfig(question=True), question_text=question, metadata=meta
    )
    expected = compute_question_features(question, meta)
    assert {k: with_q[k] for k in expected} == expected
    assert with_q["question_relation_author"] == 1.0 and with_q["question_num_digits"] == 4.0
    with pytest.raises(SignalError, match="no question text"):
        compute_features(_capture(), SignalConfig(question=True))


def test_sparsity_metrics_choose_which_signals() -> None:
    config = SignalConfig(sparsity_metrics=("hoyer",), aggregates=("last",))
    features = compute_features(_capture(), config)
    sparsity = [n for n in features if n.startswith(("hidden_", "mlp_"))]
    assert sorted(sparsity) == ["hidden_hoyer_last", "mlp_hoyer_last"]
    assert set(sparsity) == set(feature_names(config, family="sparsity"))
    with pytest.raises(ConfigError, match="unknown or repeated sparsity metric"):
        SignalConfig.from_dict({"sparsity_metrics": ["sparsest"]})


def test_draft_features_are_only_the_draft_stage() -> None:
    full = compute_features(_capture(draft=True))
    added = draft_features(_capture(draft=True).draft)
    assert set(added) == set(feature_names(stage="draft"))
    assert all(full[k] == added[k] for k in added)
    # by hand: mean logit margin of [3.0, 0.2], min prob exp(-1.2)
    assert added["draft_mean_logit_margin"] == pytest.approx(1.6)
    assert added["draft_min_prob"] == pytest.approx(np.exp(-1.2))


def test_vector_signals_are_named_rows_of_the_capture() -> None:
    capture = _capture()
    name = vector_signal_name(2, "question_end")
    assert name == "hidden_state_layer2_at_question_end"
    assert parse_vector_signal(name).layer == 2
    vectors = compute_vectors(capture, [name, "hidden_state_layer4_at_prompt_end"])
    np.testing.assert_array_equal(vectors[name], capture.hidden[1] + 1.0)
    np.testing.assert_array_equal(vectors["hidden_state_layer4_at_prompt_end"], capture.hidden[2])
    with pytest.raises(SignalError, match="only blocks"):
        compute_vectors(capture, ["hidden_state_layer3_at_prompt_end"])
    for bad in ("hidden_state_layer2", "hidden_state_layer-1_at_prompt_end", "hoyer"):
        with pytest.raises(SignalError, match="not a vector signal"):
            parse_vector_signal(bad)


def test_covering_adds_what_a_policy_reads() -> None:
    base = SignalConfig()
    assert not base.needs_question_text
    covered = base.covering(
        [
            "hidden_hoyer_last_at_question_end",
            "mlp_gini_layer_minus1",
            "question_wh_who",
            "hidden_state_layer2_at_question_mean",
            "draft_mean_logit_margin",
        ]
    )
    assert covered.positions == ("prompt_end", "question_end")
    assert covered.per_layer == (-1,)
    assert covered.question is True
    assert covered.vectors == ("hidden_state_layer2_at_question_mean",)
    assert covered.needs_question_text
    # a vector at the prompt end needs no question positions
    assert not base.covering(["hidden_state_layer2_at_prompt_end"]).needs_question_text
    # a restricted metric list grows by the metric a policy reads
    narrow = SignalConfig(sparsity_metrics=("gini",), aggregates=("last",))
    grown = narrow.covering(["hidden_hoyer_mean"])
    assert grown.sparsity_metrics == ("gini", "hoyer") and grown.aggregates == ("last", "mean")
    assert "hidden_hoyer_mean" in feature_names(grown)
    with pytest.raises(SignalError, match="extra model calls"):
        base.covering(["sample_agreement"])
    with pytest.raises(SignalError, match="unknown feature"):
        base.covering(["s_pop"])


def test_signals_section_round_trips_through_yaml(tmp_path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "signals:\n"
        "  positions: [prompt_end, question_end]\n"
        "  sparsity_metrics: [hoyer, gini]\n"
        "  per_layer: [-1]\n"
        "  question: true\n"
        "  vectors: [hidden_state_layer14_at_question_end]\n"
    )
    config = load_config(path)
    assert config.signals.positions == ("prompt_end", "question_end")
    assert config.signals.vectors == ("hidden_state_layer14_at_question_end",)
    again = RouterConfig.from_dict(config.model_dump(mode="json"))
    assert again.signals == config.signals
    path.write_text("signals:\n  vectors: [layer14]\n")
    with pytest.raises(ConfigError, match="not a vector signal"):
        load_config(path)
    path.write_text("signals:\n  postions: [prompt_end]\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path)


def test_default_yaml_has_the_signals_section() -> None:
    from pathlib import Path

    default = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert load_config(default).signals == SignalConfig()
    assert "signals:" in default.read_text()
