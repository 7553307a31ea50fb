"""Sparsity statistics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from knowgate.errors import SignalError
from knowgate.signals import sparsity

D = 100
ONE_HOT = np.eye(1, D).ravel() * 3.0
CONSTANT = np.full(D, -2.0)


def test_one_hot_is_maximally_sparse() -> None:
    assert sparsity.hoyer(ONE_HOT) == pytest.approx(1.0)
    assert sparsity.gini(ONE_HOT) == pytest.approx((D - 1) / D)
    assert sparsity.magnitude_evenness(ONE_HOT) == pytest.approx(1 / D)
    assert sparsity.l0_density(ONE_HOT) == pytest.approx(1 / D)
    for pct in (1, 5, 10):
        assert sparsity.topk_energy(ONE_HOT, pct) == pytest.approx(1.0)


def test_constant_magnitude_is_maximally_dense() -> None:
    assert sparsity.hoyer(CONSTANT) == pytest.approx(0.0, abs=1e-12)
    assert sparsity.gini(CONSTANT) == pytest.approx(0.0, abs=1e-12)
    assert sparsity.magnitude_evenness(CONSTANT) == pytest.approx(1.0)
    assert sparsity.l0_density(CONSTANT) == pytest.approx(0.0)  # nothing exceeds mean + 0
    assert sparsity.topk_energy(CONSTANT, 5) == pytest.approx(5 / D)
    assert sparsity.topk_energy(CONSTANT, 10) == pytest.approx(10 / D)


def test_hand_computed_small_vector() -> None:
    h = np.array([3.0, -4.0])
    # L1 = 7, L2 = 5, d = 2
    assert sparsity.hoyer(h) == pytest.approx((math.sqrt(2) - 7 / 5) / (math.sqrt(2) - 1))
    # sorted |h| = [3, 4]: sum((2i - n - 1) x_i) = -1*3 + 1*4 = 1; / (n * sum) = 1 / 14
    assert sparsity.gini(h) == pytest.approx(1 / 14)
    # |h| / L1 = [3/7, 4/7]: entropy = -(3/7 ln 3/7 + 4/7 ln 4/7) = 0.36313 + 0.31978 = 0.68291
    # nats; exp(0.68291) = 1.97963 "effective units" of 2 -> evenness 0.98981
    assert sparsity.magnitude_evenness(h) == pytest.approx(0.98981, abs=1e-5)
    # l0 density: mean |h| = 3.5, std = 0.5, threshold 4.0: no unit exceeds it
    assert sparsity.l0_density(h) == pytest.approx(0.0)
    # top 1% of 2 units rounds up to one unit: 16 / 25
    assert sparsity.topk_energy(h, 1) == pytest.approx(16 / 25)


def test_near_zero_fraction_counts_below_eps() -> None:
    a = np.array([0.0, 0.001, -0.005, 0.5, -2.0])
    assert sparsity.near_zero_fraction(a, eps=0.01) == pytest.approx(3 / 5)
    assert sparsity.near_zero_fraction(a, eps=0.0001) == pytest.approx(1 / 5)


def test_vectorised_over_leading_axes() -> None:
    batch = np.stack([ONE_HOT, CONSTANT])
    np.testing.assert_allclose(sparsity.hoyer(batch), [1.0, 0.0], atol=1e-12)
    assert sparsity.gini(np.ones((3, 4, D))).shape == (3, 4)


def test_sparser_vector_scores_sparser_on_every_measure() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=D)
    sparse = dense * (rng.random(D) < 0.1)
    assert sparsity.hoyer(sparse) > sparsity.hoyer(dense)
    assert sparsity.gini(sparse) > sparsity.gini(dense)
    assert sparsity.topk_energy(sparse, 10) > sparsity.topk_energy(dense, 10)
    assert sparsity.magnitude_evenness(sparse) < sparsity.magnitude_evenness(dense)


@pytest.mark.parametrize(
    "fn",
    [
        sparsity.hoyer,
        sparsity.gini,
        sparsity.magnitude_evenness,
        sparsity.l0_density,
        lambda h: sparsity.topk_energy(h, 5),
        lambda h: sparsity.near_zero_fraction(h, 0.01),
    ],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(fn, bad) -> None:
    h = np.ones(8)
    h[3] = bad
    with pytest.raises(SignalError, match="non-finite"):
        fn(h)


def test_degenerate_inputs_raise() -> None:
    with pytest.raises(SignalError, match="all-zero"):
        sparsity.hoyer(np.zeros(4))
    with pytest.raises(SignalError, match="non-empty"):
        sparsity.gini(np.array([]))
    with pytest.raises(SignalError, match="percent"):
        sparsity.topk_energy(np.ones(4), 0)
    with pytest.raises(SignalError, match="eps"):
        sparsity.near_zero_fraction(np.ones(4), 0)


def test_l0_density_hand_computed() -> None:
    # |h| = [1, 1, 1, 5]: mean 2, population std sqrt(((1-2)^2 * 3 + 9) / 4) = sqrt(3) = 1.732;
    # threshold 3.732: exactly one of four units exceeds it
    assert sparsity.l0_density(np.array([1.0, -1.0, 1.0, 5.0])) == pytest.approx(0.25)


def test_effective_rank_of_a_matrix() -> None:
    # rank one: every row a multiple of the same vector -> one singular value -> rank 1
    assert sparsity.effective_rank(np.array([[1.0, 2.0], [2.0, 4.0], [-3.0, -6.0]])) == (
        pytest.approx(1.0)
    )
    # orthogonal rows of equal norm: singular values equal -> exp(ln 3) = 3
    assert sparsity.effective_rank(np.eye(3) * 2.0) == pytest.approx(3.0)
    # singular values 4 and 3 -> p = [4/7, 3/7] -> exp(0.68291) = 1.97963
    assert sparsity.effective_rank(np.array([[3.0, 0.0], [0.0, 4.0]])) == pytest.approx(
        1.97963, abs=1e-5
    )
    with pytest.raises(SignalError, match="all-zero"):
        sparsity.effective_rank(np.zeros((2, 3)))
    with pytest.raises(SignalError, match=r"\[n, d\]"):
        sparsity.effective_rank(np.ones(3))
    with pytest.raises(SignalError, match="non-finite"):
        sparsity.effective_rank(np.array([[1.0, np.nan]]))
