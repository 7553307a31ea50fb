"""Sparsity statistics against values worked out by hand."""

from __future__ import annotations

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
    # L1 = 7, L2 = 5, d = 2: (1.414214 - 1.4) / 0.414214 = 0.034315
    assert sparsity.hoyer(h) == pytest.approx(0.034315, abs=1e-6)
    # sorted |h| = [3, 4]: sum((2i - n - 1) x_i) = -1*3 + 1*4 = 1; / (n * sum) = 1 / 14
    assert sparsity.gini(h) == pytest.approx(1 / 14)
    # |h| / L1 = [3/7, 4/7]: entropy = -(3/7 ln 3/7 + 4/7 ln 4/7) = 0.36313 + 0.31978 = 0.68291
    # nats; exp(0.68291) = 1.97963 "effective units" of 2 -> evenness 0.98981
    assert sparsity.magnitude_evenness(h) == pytest.approx(0.98981, abs=1e-5)
    # l0 density: mean |h| = 3.5, std = 0.5, threshold 4.0: no unit exceeds it
    assert sparsity.l0_density(h) == pytest.approx(0.0)
    # top 1% of 2 units rounds up to one unit: 16 / 25
    assert sparsity.topk_energy(h, 1) == pytest.approx(16 / 25)


#: Six units with ties, zeros and both signs: |h| sorted is [0, 0, 1, 2, 2, 4].
SIX = np.array([0.0, -2.0, 1.0, 0.0, 4.0, -2.0])


def test_hand_computed_six_unit_vector() -> None:
    # L1 = 0 + 0 + 1 + 2 + 2 + 4 = 9; sum h^2 = 1 + 4 + 4 + 16 = 25, L2 = 5; sqrt d = 2.449490
    # Hoyer: (2.449490 - 9/5) / (2.449490 - 1) = 0.649490 / 1.449490 = 0.448082
    assert sparsity.hoyer(SIX) == pytest.approx(0.448082, abs=1e-6)
    # Gini from its definition, the mean absolute difference over all ordered pairs / (2 mean):
    # unordered pairs |x_i - x_j|: 0-0: 0; 0-1 (x2): 2; 0-2 (x4): 8; 0-4 (x2): 8; 1-2 (x2): 2;
    # 1-4: 3; 2-2: 0; 2-4 (x2): 4 -> 27, ordered 54; G = 54 / (2 * 6^2 * 1.5) = 54 / 108 = 1/2
    assert sparsity.gini(SIX) == pytest.approx(0.5)
    # p = |h| / 9 = [0, 0, 1/9, 2/9, 2/9, 4/9] (0 ln 0 = 0): entropy = sum p ln(1/p)
    # = ln 9 - (4/9) ln 2 - (4/9) ln 4 = ln 9 - (4/3) ln 2 = 1.273028 nats;
    # exp = 9 / 2^(4/3) = 3.571652 effective units of 6 -> evenness 0.595275
    assert sparsity.magnitude_evenness(SIX) == pytest.approx(0.595275, abs=1e-6)
    # mean |h| = 1.5, population variance 25/6 - 2.25 = 23/12, std 1.384437: threshold 2.884437;
    # only the 4 exceeds it
    assert sparsity.l0_density(SIX) == pytest.approx(1 / 6)
    # energies [0, 4, 1, 0, 16, 4] of 25: the top 1% (rounds up to 1 unit) 16; 20% of 6 = 1.2
    # -> 2 units (16 + 4); 50% -> 3 units (16 + 4 + 4); 100% -> all
    assert sparsity.topk_energy(SIX, 1) == pytest.approx(16 / 25)
    assert sparsity.topk_energy(SIX, 20) == pytest.approx(20 / 25)
    assert sparsity.topk_energy(SIX, 50) == pytest.approx(24 / 25)
    assert sparsity.topk_energy(SIX, 100) == pytest.approx(1.0)
    # |h| < 1: the two zeros; |h| < 1.5: the zeros and the 1
    assert sparsity.near_zero_fraction(SIX, eps=1.0) == pytest.approx(2 / 6)
    assert sparsity.near_zero_fraction(SIX, eps=1.5) == pytest.approx(3 / 6)
    # Row by row: the vector reversed, negated and tripled is the same distribution of relative
    # magnitudes, so these scale-free measures give the same values on the second row.
    rows = np.stack([SIX, SIX[::-1] * -3.0])
    np.testing.assert_allclose(sparsity.gini(rows), [0.5, 0.5])
    np.testing.assert_allclose(sparsity.hoyer(rows), [0.448082, 0.448082], atol=1e-6)
    np.testing.assert_allclose(sparsity.l0_density(rows), [1 / 6, 1 / 6])


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
