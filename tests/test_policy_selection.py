"""Recipes choose inputs and regularisation by inner CV on training rows only.

The data are built so the right choice is known: the label depends on named signals (or one
hidden-state vector) and everything else is noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from knowgate.evaluation.cross_fitting import cross_fit, outer_splits
from knowgate.evaluation.metrics import auroc
from knowgate.policy import (
    FeatureGroups,
    FusedPolicy,
    HiddenStateProbe,
    ProbePolicy,
    RetrievalBudget,
    StackedProbe,
    fit_policy,
    load_policy,
    selection,
)
from knowgate.policy.linear import make_splits

UNCERTAINTY = ["next_token_entropy", "next_token_max_prob", "next_token_margin"]
SPARSITY = [f"hidden_{m}_{a}" for m in ("hoyer", "gini", "l0_density") for a in ("last", "mid")]
SPARSITY += [f"mlp_{m}_{a}" for m in ("hoyer", "gini", "top5_energy") for a in ("last", "mean")]
SITES = [
    f"hidden_state_layer{layer}_at_{position}"
    for layer in (2, 5)
    for position in ("prompt_end", "question_end", "question_mean")
]
D = 12


def _fused_data(n: int, seed: int, sparsity_signal: float = 0.0):
    """The label follows next_token_max_prob (and a sparsity feature when asked)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(UNCERTAINTY) + len(SPARSITY)))
    logit = -2.0 + 1.5 * x[:, 1] + sparsity_signal * x[:, len(UNCERTAINTY)]
    y = (rng.random(n) < expit(logit)).astype(np.int64)
    return x, y, UNCERTAINTY + SPARSITY


def _probe_data(n: int, seed: int):
    """The label follows one direction of layer 5's question-end state; the rest is noise."""
    direction = np.random.default_rng(123).normal(size=D)  # one direction for every draw
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(SITES) * D)).astype(np.float16)
    site = SITES.index("hidden_state_layer5_at_question_end")
    signal = x[:, site * D : (site + 1) * D].astype(np.float64) @ direction / np.sqrt(D)
    y = (rng.random(n) < expit(-1.5 + 2.5 * signal)).astype(np.int64)
    return x, y


def _inner(y):
    return make_splits(y, None, n_splits=4, seed=0)


def test_feature_groups_choose_the_informative_family_and_keep_noise_out() -> None:
    x, y, names = _fused_data(1200, 0)
    fitted = selection.FeatureGroups().fit(x, y, names, _inner(y))
    chosen = fitted.choice.label
    # the informative feature is an uncertainty one: the choice is that family or that feature
    assert chosen.startswith(("uncertainty,", "next_token_max_prob")), chosen
    assert "sparsity" not in chosen
    # every candidate was scored on the training rows; groups and singles both tried
    assert {"uncertainty, C=0.01", "sparsity+uncertainty, C=1", "hidden_hoyer_last"} <= set(
        fitted.choice.scores
    )
    assert fitted.choice.inner_auroc == max(fitted.choice.scores.values())
    # with signal in a sparsity feature too, the union wins
    x2, y2, _ = _fused_data(1500, 1, sparsity_signal=1.5)
    both = selection.FeatureGroups(singles=False).fit(x2, y2, names, _inner(y2))
    assert both.choice.label.startswith("sparsity+uncertainty"), both.choice.label


def test_the_chosen_recipe_is_not_worse_held_out_than_fitting_everything() -> None:
    x, y, names = _fused_data(600, 2)
    fresh_x, fresh_y, _ = _fused_data(20000, 3)
    chosen = selection.FeatureGroups().fit(x, y, names, _inner(y)).model
    everything = selection.Logistic(c=1.0).fit(x, y, names, _inner(y)).model
    best = auroc(fresh_y, fresh_x[:, 1])  # the informative feature alone
    assert auroc(fresh_y, chosen.logits(fresh_x)) >= best - 0.01
    assert auroc(fresh_y, chosen.logits(fresh_x)) >= auroc(fresh_y, everything.logits(fresh_x))


def test_selection_inside_cross_fitting_never_sees_held_out_rows(monkeypatch) -> None:
    """Every fit of every candidate, per outer fold, is on that fold's training rows only."""
    x, y, names = _fused_data(600, 4)
    row_of = {float(v): i for i, v in enumerate(x[:, 0])}  # column 0 is unique per row
    log: list[tuple[str, set[int]]] = []
    original = selection.fit_linear

    def recording(xx, yy, *, c):
        log.append(("fit", {row_of[float(v)] for v in xx[:, 0]} if xx.shape[1] else set()))
        return original(xx, yy, c=c)

    class Marking(selection.FeatureGroups):
        def fit(self, xx, yy, nn, inner):
            log.append(("fold", {row_of[float(v)] for v in xx[:, 0]}))
            return super().fit(xx, yy, nn, inner)

    monkeypatch.setattr(selection, "fit_linear", recording)
    # groups always carry column 0 so every recorded fit can be traced back to its rows
    recipe = Marking(
        groups=(("uncertainty", tuple(UNCERTAINTY)), ("all", tuple(names))), singles=False
    )
    splits = outer_splits(y, None, folds=3, seed=0)
    fit = cross_fit(x, y, None, names, splits, calibration="sigmoid", learner=recipe)
    folds = [i for i, (kind, _) in enumerate(log) if kind == "fold"]
    assert len(folds) == 3
    for k, start in enumerate(folds):
        stop = folds[k + 1] if k + 1 < len(folds) else len(log)
        train = log[start][1]
        held_out = {int(i) for i in splits[k][1]}
        assert train == {int(i) for i in splits[k][0]}
        fits = [rows for kind, rows in log[start + 1 : stop] if kind == "fit"]
        assert fits and all(rows <= train and not rows & held_out for rows in fits)
        assert fit.folds[k].choice is not None  # the choice is recorded per outer fold


def test_probe_chooses_the_informative_layer_and_position() -> None:
    x, y = _probe_data(1200, 0)
    fitted = HiddenStateProbe().fit(x, y, SITES, _inner(y))
    assert fitted.choice.label.startswith("hidden_state_layer5_at_question_end, C=")
    assert len([k for k in fitted.choice.scores if k.endswith("C=0.01")]) == len(SITES)
    fresh_x, fresh_y = _probe_data(3000, 99)  # same direction, fresh rows
    assert auroc(fresh_y, fitted.model.logits(fresh_x)) > 0.75
    # cross-fitted: every outer fold, choosing on its own training rows, finds it
    splits = outer_splits(y, None, folds=3, seed=0)
    cf = cross_fit(x, y, None, SITES, splits, calibration="sigmoid", learner=HiddenStateProbe())
    assert all(f.choice.label.startswith("hidden_state_layer5_at_question_end") for f in cf.folds)
    assert auroc(y, cf.score) > 0.75


def test_stacked_probe_combines_probe_and_scalars() -> None:
    x, y = _probe_data(1500, 1)
    rng = np.random.default_rng(9)
    informative = y + rng.normal(scale=1.2, size=y.size)  # a scalar carrying signal too
    scalars = np.column_stack([informative, rng.normal(size=y.size)])
    names = [*SITES, "next_token_max_prob", "hidden_hoyer_last"]
    full = np.column_stack([x.astype(np.float64), scalars])
    fitted = StackedProbe().fit(full, y, names, _inner(y))
    combiner = fitted.choice.label.split("combiner ", 1)[1]
    assert fitted.choice.label.startswith("hidden_state_layer5_at_question_end")
    assert combiner.startswith("probe+uncertainty") or combiner.startswith(
        "probe+sparsity+uncertainty"
    ), combiner
    fit = fit_policy(full, y, names, recipe=StackedProbe(), calibration="sigmoid")
    assert isinstance(fit.policy, ProbePolicy)
    assert "next_token_max_prob" in fit.policy.required_features
    assert fit.policy.training["selection"]["chosen"] == fit.choice.label


def test_fit_policy_with_a_probe_recipe_ships_a_probe(tmp_path) -> None:
    x, y = _probe_data(800, 2)
    fit = fit_policy(
        x,
        y,
        SITES,
        recipe=HiddenStateProbe(cs=(0.01,)),
        calibration="isotonic",
        model_id="smollm2-135m",
        signal_config={"positions": ["prompt_end"]},
    )
    policy = fit.policy
    assert isinstance(policy, ProbePolicy)
    assert policy.required_vectors == ("hidden_state_layer5_at_question_end",)
    policy.save(tmp_path / "probe.json")
    loaded = load_policy(tmp_path / "probe.json", model_id="smollm2-135m")
    site = SITES.index("hidden_state_layer5_at_question_end")
    rows = [{policy.required_vectors[0]: r[site * D : (site + 1) * D]} for r in x[:50]]
    assert [d.p_known for d in loaded.decide_batch(rows)] == pytest.approx(
        [d.p_known for d in policy.decide_batch(rows)]
    )
    assert loaded.signal_config == {"positions": ["prompt_end"]}
    assert "hidden-state vector" in loaded.training["recipe"]


def test_fit_policy_with_feature_groups_ships_only_the_chosen_features() -> None:
    x, y, names = _fused_data(1000, 5)
    fit = fit_policy(x, y, names, recipe=FeatureGroups(), calibration="sigmoid")
    assert isinstance(fit.policy, FusedPolicy)
    assert set(fit.policy.required_features) <= set(UNCERTAINTY)
    assert fit.policy.training["selection"]["chosen"] == fit.choice.label


def test_an_isotonic_budget_is_met_within_a_point_on_the_calibration_data() -> None:
    """Isotonic steps tie many questions; the strictly monotone blend breaks the ties.

    Expected value derived from the budget alone: 80% of the calibration questions retrieve
    (floor of 0.8 n), whatever the steps; without tie-breaking, whole steps fall on one side.
    """
    rng = np.random.default_rng(0)
    n = 999
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < expit(-2.5 + 0.8 * x[:, 0])).astype(np.int64)
    fit = fit_policy(
        x,
        y,
        ["next_token_entropy", "next_token_max_prob", "next_token_margin"],
        calibration="isotonic",
        operating_point=RetrievalBudget(max_retrieval_rate=0.8),
    )
    p_oof = fit.policy.calibrator.apply(fit.oof_logits)
    assert fit.threshold_choice.retrieval_rate == pytest.approx(0.8, abs=0.01)
    assert np.mean(p_oof < fit.policy.threshold) == pytest.approx(0.8, abs=0.01)
    # the same fit without the tie-break: the steps' ties make the budget miss by far
    untied = fit.policy.calibrator.model_copy(update={"tie_break": 0.0}).apply(fit.oof_logits)
    cut = np.sort(untied)[int(0.8 * n)]
    assert abs(np.mean(untied < cut) - 0.8) > 0.05
    # ranking keeps its resolution: the calibrated p orders rows as the logits do
    assert auroc(y, p_oof) == pytest.approx(auroc(y, fit.oof_logits), abs=1e-9)
