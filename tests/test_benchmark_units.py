"""Units of the benchmark: operating rules, curves, sampling (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from knowgate.errors import DataError, InputError, PolicyError
from knowgate.evaluation.bench.curves import (
    accuracy_curve,
    compare_curves,
    random_curve,
    rate_grid,
)
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.evaluation.operating_rules import (
    RULES,
    accuracy_loss_threshold,
    break_even_threshold,
    expected_loss_threshold,
    fit_break_even,
    fixed_threshold,
    max_accuracy_threshold,
)
from knowgate.evaluation.sampling import ids_digest, sample_dataset


# ------------------------------------------------------------------------ operating rules
@pytest.mark.parametrize(("a", "b"), [(-0.5, 0.3), (0.2, 0.5), (-1.5, -0.2)])
def test_break_even_recovers_the_crossing_of_a_known_curve(a, b) -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.001, 0.999, 40_000)
    rag = (rng.random(p.size) < expit(a + b * logit(p))).astype(int)
    cb = (rng.random(p.size) < p).astype(int)
    fit = fit_break_even(p, cb, rag)
    assert fit.intercept == pytest.approx(a, abs=0.05)
    assert fit.slope == pytest.approx(b, abs=0.05)
    assert fit.threshold == pytest.approx(expit(a / (1 - b)), abs=0.02)
    # At the cut the two branches are equally likely right; above it closed-book wins.
    t = fit.threshold
    assert expit(a + b * logit(t)) == pytest.approx(t, abs=0.02)


def test_break_even_retrieves_always_when_retrieval_gains_faster_than_closed_book() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 0.99, 20_000)
    rag = (rng.random(p.size) < expit(1.0 + 1.5 * logit(p))).astype(int)
    assert break_even_threshold(p, np.zeros(p.size), rag) == 1.0


def test_break_even_with_constant_retrieval_outcome() -> None:
    p = np.linspace(0, 1, 50)
    assert break_even_threshold(p, np.zeros(50), np.ones(50)) == pytest.approx(1.0, abs=1e-3)
    assert break_even_threshold(p, np.zeros(50), np.zeros(50)) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.03])
def test_expected_loss_rule_spends_exactly_its_budget_on_a_known_curve(tolerance) -> None:
    rng = np.random.default_rng(3)
    a, b = 1.0, 0.3  # retrieval helps most questions; a small model's p(known) is mostly low
    p = np.clip(rng.beta(1.0, 6.0, 40_000), 0.001, 0.999)
    rag = (rng.random(p.size) < expit(a + b * logit(p))).astype(int)
    cb = (rng.random(p.size) < p).astype(int)
    cut = expected_loss_threshold(tolerance)(p, cb, rag)
    # The true expected loss of skipping every p >= cut, per question, is about the budget.
    skipped = p >= cut
    true_loss = (expit(a + b * logit(p[skipped])) - p[skipped]).sum() / p.size
    assert true_loss == pytest.approx(tolerance, abs=0.003)
    assert cut <= fit_break_even(p, cb, rag).threshold + 1e-9
    if tolerance > 0:  # a bigger budget skips more
        assert cut < expected_loss_threshold(0.0)(p, cb, rag)


def test_expected_loss_rule_retrieves_always_when_every_skip_costs_too_much() -> None:
    p = np.full(100, 0.01)  # nobody is known; retrieval is right half the time
    rag = np.tile([0, 1], 50)
    assert expected_loss_threshold(0.01)(p, np.zeros(100), rag) > 1.0
    with pytest.raises(PolicyError, match="tolerance"):
        expected_loss_threshold(1.5)


def test_max_accuracy_and_tolerance_rules_on_a_hand_example() -> None:
    # Retrieving the m lowest-p rows: accuracy 3/6 (m=0), 4/6, 5/6, 5/6, 5/6, 4/6, 4/6 (m=6).
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.6, 0.8])
    cb = np.array([0, 0, 0, 1, 1, 1])
    rag = np.array([1, 1, 0, 1, 0, 1])
    # Best accuracy 5/6 first reached at m=2: skip p >= 0.2.
    assert max_accuracy_threshold(p, cb, rag) == pytest.approx(0.2)
    # Within 0 of always (4/6) with the fewest retrievals: m=1, skip p >= 0.1.
    assert accuracy_loss_threshold(0.0)(p, cb, rag) == pytest.approx(0.1)
    # A 0.2 tolerance allows 3/6: skip everything (cut at the lowest p).
    assert accuracy_loss_threshold(0.2)(p, cb, rag) == pytest.approx(0.05)
    assert fixed_threshold(0.5)(p, cb, rag) == 0.5
    assert set(RULES) >= {"break-even", "probability:0.5"}


def test_max_accuracy_retrieves_always_when_skipping_never_helps() -> None:
    p = np.array([0.1, 0.5, 0.9])
    assert max_accuracy_threshold(p, np.zeros(3), np.ones(3)) == 1.0


@pytest.mark.parametrize(
    ("p", "cb", "rag", "message"),
    [
        ([0.1, np.nan], [0, 1], [1, 1], "finite probabilities"),
        ([0.1, 1.2], [0, 1], [1, 1], "finite probabilities"),
        ([0.1, 0.2], [0], [1, 1], "probabilities"),
        ([], [], [], "probabilities"),
    ],
)
def test_rules_reject_bad_inputs(p, cb, rag, message) -> None:
    with pytest.raises(PolicyError, match=message):
        break_even_threshold(p, cb, rag)
    with pytest.raises(PolicyError, match=message):
        max_accuracy_threshold(p, cb, rag)


def test_rule_parameters_are_validated() -> None:
    with pytest.raises(PolicyError):
        accuracy_loss_threshold(-0.1)
    with pytest.raises(PolicyError):
        fixed_threshold(1.5)


# ---------------------------------------------------------------------------------- curves
def test_curve_end_points_and_perfect_ranking() -> None:
    cb = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    rag = np.array([0, 1, 1, 1, 1, 0, 1, 0, 1, 1])
    grid = np.linspace(0, 1, 11)
    perfect = accuracy_curve(cb.astype(float), cb, rag, grid=grid)
    assert perfect[0] == pytest.approx(cb.mean())
    assert perfect[-1] == pytest.approx(rag.mean())
    # Retrieving exactly the 8 questions the model gets wrong: the oracle's accuracy.
    assert perfect[8] == pytest.approx(np.maximum(cb, rag).mean())
    worst = accuracy_curve(-cb.astype(float), cb, rag, grid=grid)
    # The two known questions retrieved first: rag right on one of them, every other one wrong.
    assert worst[2] == pytest.approx(0.1)
    diagonal = random_curve(cb, rag, grid)
    assert diagonal[5] == pytest.approx(0.5 * rag.mean() + 0.5 * cb.mean())


def test_tied_scores_follow_the_random_diagonal_on_average() -> None:
    rng = np.random.default_rng(12345)  # not the curve's tie-breaking seed (0)
    cb = (rng.random(2000) < 0.2).astype(int)
    rag = (rng.random(2000) < 0.6).astype(int)
    flat = accuracy_curve(np.zeros(2000), cb, rag)
    assert np.abs(flat - random_curve(cb, rag)).max() < 0.03


def test_compare_curves_excludes_end_points() -> None:
    grid = rate_grid(5)
    a = np.array([0.1, 0.3, 0.3, 0.2, 0.5])
    b = np.array([0.1, 0.2, 0.3, 0.3, 0.5])
    c = compare_curves(a, b)
    assert c.share_above == pytest.approx(1 / 3) and c.share_below == pytest.approx(1 / 3)
    assert c.min_difference == pytest.approx(-0.1) and c.max_difference == pytest.approx(0.1)
    assert c.mean_difference == pytest.approx(0.0)
    assert grid.size == 5
    with pytest.raises(InputError):
        compare_curves(a, b[:3])


def test_curve_input_errors() -> None:
    with pytest.raises(InputError):
        accuracy_curve([0.1, np.inf], [0, 1], [1, 1])
    with pytest.raises(InputError):
        accuracy_curve([0.1], [0, 1], [1, 1])


# -------------------------------------------------------------------------------- sampling
def _dataset(n: int) -> QADataset:
    examples = tuple(QAExample(str(i), f"question {i}?", ("a",)) for i in range(n))
    return QADataset("toy", __import__("pathlib").Path("toy.jsonl"), examples, "hash")


def test_sample_is_seeded_in_file_order_and_shares_the_cache_identity() -> None:
    ds = _dataset(100)
    a, b = sample_dataset(ds, 10, seed=3), sample_dataset(ds, 10, seed=3)
    assert [e.id for e in a] == [e.id for e in b]
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)
    assert len({e.id for e in a}) == 10
    assert (a.name, a.path, a.content_hash) == (ds.name, ds.path, ds.content_hash)
    assert ids_digest(a) != ids_digest(sample_dataset(ds, 10, seed=4))
    assert sample_dataset(ds, 100) is ds and sample_dataset(ds, 500) is ds
    with pytest.raises(DataError):
        sample_dataset(ds, 0)
