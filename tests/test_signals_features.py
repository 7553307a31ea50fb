"""Uncertainty aggregates and the named-feature registry, on hand-built captures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from knowgate.errors import ConfigError as ConfigErrorType
from knowgate.errors import SignalError
from knowgate.signals import (
    ForwardCapture,
    SignalConfig,
    TokenStats,
    compute_features,
    draft_features,
    feature_names,
    feature_specs,
    uncertainty,
)


def stats(entropy, prob, margin, logit_margin=None) -> TokenStats:
    logit_margin = list(logit_margin) if logit_margin is not None else [1.0] * len(list(entropy))
    return TokenStats.from_lists(
        list(entropy), [math.log(p) for p in prob], list(margin), logit_margin
    )


def make_capture(n_layers: int = 4, draft: TokenStats | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    return ForwardCapture(
        layers=tuple(range(n_layers)),
        num_layers=n_layers,
        hidden=rng.normal(size=(n_layers, 16)).astype(np.float32),
        mlp=rng.normal(size=(n_layers, 32)).astype(np.float32),
        next_token=stats([1.5], [0.4], [0.1]),
        draft=draft,
    )


def test_uncertainty_aggregates_by_hand() -> None:
    s = stats([0.5, 2.0, 1.0], [0.9, 0.2, 0.5], [0.8, 0.05, 0.3])
    assert uncertainty.mean_entropy(s) == pytest.approx(3.5 / 3)
    assert uncertainty.max_entropy(s) == pytest.approx(2.0)
    assert uncertainty.min_prob(s) == pytest.approx(0.2)
    assert uncertainty.mean_prob(s) == pytest.approx(1.6 / 3)
    mean_lp = (math.log(0.9) + math.log(0.2) + math.log(0.5)) / 3
    assert uncertainty.mean_logprob(s) == pytest.approx(mean_lp)
    assert uncertainty.perplexity(s) == pytest.approx(math.exp(-mean_lp))
    assert uncertainty.first_margin(s) == pytest.approx(0.8)
    t = stats([0.5, 2.0, 1.0], [0.9, 0.2, 0.5], [0.8, 0.05, 0.3], [4.0, 0.5, 1.5])
    assert uncertainty.first_logit_margin(t) == pytest.approx(4.0)
    assert uncertainty.mean_logit_margin(t) == pytest.approx(2.0)
    assert uncertainty.min_logit_margin(t) == pytest.approx(0.5)


def test_empty_token_stats_raise() -> None:
    with pytest.raises(SignalError, match="at least one token"):
        uncertainty.mean_entropy(stats([], [], []))


def test_token_stats_reject_nan_and_ragged_arrays() -> None:
    with pytest.raises(SignalError, match="non-finite"):
        TokenStats.from_lists([float("nan")], [0.0], [0.0], [0.0])
    with pytest.raises(SignalError, match="equally long"):
        TokenStats.from_lists([1.0, 2.0], [0.0], [0.0], [0.0])
    with pytest.raises(SignalError, match="equally long"):
        TokenStats.from_lists([1.0], [0.0], [0.0], [0.0, 1.0])


def test_feature_names_match_computed_features() -> None:
    draft = stats([0.5, 1.0], [0.9, 0.6], [0.8, 0.2])
    with_draft = compute_features(make_capture(draft=draft))
    model_features = feature_names(family="sparsity") + feature_names(family="uncertainty")
    assert list(with_draft) == model_features
    pre_only = compute_features(make_capture())
    assert set(pre_only) == set(model_features) & set(feature_names(stage="prefill"))
    assert set(with_draft) - set(pre_only) == set(feature_names(stage="draft"))
    specs = feature_specs()
    assert all(specs[name].family in {"sparsity", "uncertainty"} for name in with_draft)


def test_aggregates_pick_the_right_layers() -> None:
    capture = make_capture(n_layers=5)
    from knowgate.signals.sparsity import hoyer

    per_layer = hoyer(capture.hidden)
    f = compute_features(capture)
    assert f["hidden_hoyer_last"] == pytest.approx(per_layer[4])
    assert f["hidden_hoyer_mid"] == pytest.approx(per_layer[2])  # 5 // 2
    assert f["hidden_hoyer_mean"] == pytest.approx(per_layer.mean())
    assert f["next_token_entropy"] == pytest.approx(1.5)
    assert f["next_token_max_prob"] == pytest.approx(0.4)


def test_per_layer_features_and_missing_layers() -> None:
    cfg = SignalConfig(per_layer=(0, -1))
    f = compute_features(make_capture(), cfg)
    assert "hidden_gini_layer0" in f and "mlp_hoyer_layer_minus1" in f
    assert f["hidden_gini_layer_minus1"] == pytest.approx(f["hidden_gini_last"])
    partial = ForwardCapture(
        layers=(2, 3),
        num_layers=4,
        hidden=np.ones((2, 8), dtype=np.float32),
        mlp=np.ones((2, 8), dtype=np.float32),
        next_token=stats([1.0], [0.5], [0.1]),
    )
    with pytest.raises(SignalError, match="only layers"):
        compute_features(partial, SignalConfig(per_layer=(0,)))


def test_capture_validates_shapes_and_values() -> None:
    good = make_capture()
    with pytest.raises(SignalError, match="hidden must be"):
        ForwardCapture(good.layers, 4, good.hidden[:2], good.mlp, good.next_token)
    bad = good.hidden.copy()
    bad[0, 0] = np.nan
    with pytest.raises(SignalError, match="non-finite"):
        ForwardCapture(good.layers, 4, bad, good.mlp, good.next_token)


def test_signal_config_rejects_unknown_keys() -> None:
    from knowgate.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        SignalConfig.from_dict({"aggregates": ["last"], "bogus": 1})


def _with_question_positions(capture: ForwardCapture) -> ForwardCapture:
    from dataclasses import replace

    from knowgate.signals import PositionStates

    # question_end: every layer's vector one-hot (maximally sparse); question_mean: constant
    one_hot = np.zeros_like(capture.hidden)
    one_hot[:, 0] = 2.0
    mlp_one_hot = np.zeros_like(capture.mlp)
    mlp_one_hot[:, 3] = -1.0
    return replace(
        capture,
        positions={
            "question_end": PositionStates(one_hot, mlp_one_hot),
            "question_mean": PositionStates(
                np.ones_like(capture.hidden), np.ones_like(capture.mlp)
            ),
        },
        question_states=np.array([[1.0] + [0.0] * 15, [0.0, 1.0] + [0.0] * 14], np.float32),
    )


def test_features_at_question_positions() -> None:
    cfg = SignalConfig(positions=("prompt_end", "question_end", "question_mean"))
    capture = _with_question_positions(make_capture())
    f = compute_features(capture, cfg)
    # one-hot rows: Hoyer 1 and top-1% energy 1 on every layer (hand values, not the code's)
    assert f["hidden_hoyer_last_at_question_end"] == pytest.approx(1.0)
    assert f["mlp_hoyer_mean_at_question_end"] == pytest.approx(1.0)
    assert f["hidden_top1_energy_mid_at_question_end"] == pytest.approx(1.0)
    # constant rows: Hoyer 0, evenness 1
    assert f["hidden_hoyer_last_at_question_mean"] == pytest.approx(0.0, abs=1e-12)
    assert f["mlp_magnitude_evenness_mean_at_question_mean"] == pytest.approx(1.0)
    # the prompt-end features keep their names and values
    assert f["hidden_hoyer_last"] == pytest.approx(compute_features(capture)["hidden_hoyer_last"])
    # two orthogonal unit rows: singular values 1, 1 -> effective rank 2
    assert f["hidden_effective_rank_question"] == pytest.approx(2.0)
    assert set(f) == set(feature_names(cfg, family="sparsity")) | set(
        feature_names(cfg, family="uncertainty", stage="prefill")
    )


def test_question_positions_that_were_not_captured_raise() -> None:
    cfg = SignalConfig(positions=("question_end",))
    with pytest.raises(SignalError, match="was not captured"):
        compute_features(make_capture(), cfg)
    with pytest.raises(ConfigErrorType, match="unique"):
        SignalConfig.from_dict({"positions": ["prompt_end", "prompt_end"]})


def test_renamed_and_removed_features() -> None:
    names = feature_names()
    assert "hidden_magnitude_evenness_last" in names
    assert not [n for n in names if "effective_rank" in n]  # only with question positions
    assert "draft_first_margin" not in names  # duplicated next_token_margin
    assert {"next_token_logit_margin", "draft_mean_logit_margin", "draft_min_logit_margin"} <= (
        set(names)
    )


def test_sampling_consistency_by_hand() -> None:
    from knowgate.signals.consistency import sampling_consistency

    # normal forms: "paris" x2 agree with the greedy "Paris."; "paris france" and "lyon" do not
    f = sampling_consistency("Paris.", ["paris", "The Paris", "Paris, France", "Lyon"])
    assert f["sample_agreement"] == pytest.approx(2 / 4)
    # token F1 with "paris": 1, 1, 2*(1/2*1)/(1/2+1) = 2/3, 0 -> mean 2/3 / ... = (2 + 2/3) / 4
    assert f["sample_lexical_similarity"] == pytest.approx((2 + 2 / 3) / 4)
    with pytest.raises(SignalError, match="non-empty"):
        sampling_consistency("Paris", [])
    with pytest.raises(SignalError, match="non-empty"):
        sampling_consistency("Paris", "Paris")  # type: ignore[arg-type]


def test_self_report_renormalises_yes_over_yes_and_no() -> None:
    from knowgate.signals.consistency import self_report

    assert self_report(0.3, 0.1)["self_report_p_yes"] == pytest.approx(0.75)
    for bad in [(float("nan"), 0.1), (1.2, 0.1), (0.0, 0.0)]:
        with pytest.raises(SignalError):
            self_report(*bad)
    specs = feature_specs()
    assert specs["sample_agreement"].stage == "sampling"
    assert specs["self_report_p_yes"].stage == "self_report"


def test_sparsity_by_layer_table() -> None:
    from knowgate.signals import sparsity_by_layer, sparsity_table_names
    from knowgate.signals.sparsity import gini

    cfg = SignalConfig(positions=("prompt_end", "question_end"))
    capture = _with_question_positions(make_capture(n_layers=3))
    table = sparsity_by_layer(capture, cfg)
    names = sparsity_table_names()
    assert table.shape == (len(names), 2, 3)
    np.testing.assert_allclose(table[names.index("hidden_gini"), 0], gini(capture.hidden))
    # one-hot rows at question_end: Hoyer 1 on every layer
    np.testing.assert_allclose(table[names.index("mlp_hoyer"), 1], [1.0, 1.0, 1.0])
    assert "mlp_near_zero_fraction" in names and "hidden_near_zero_fraction" not in names


def test_draft_features_of_a_local_draft_are_the_local_draft_names() -> None:
    # A local draft keeps full distributions: it gets every local draft feature and none of the
    # top-k ones a served model's draft provides (those read a server's top-k lists).
    out = draft_features(stats([0.5, 1.0], [0.9, 0.6], [0.85, 0.3], [3.0, 1.0]))
    local = set(feature_names(stage="draft", family="uncertainty"))
    assert set(out) == local
    assert not any("topk" in name for name in out)
    assert out["draft_min_prob"] == pytest.approx(0.6)
