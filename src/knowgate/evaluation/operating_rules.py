"""Operating points that use both branches: where to cut p(known) when retrieval is known too.

The policy module's operating points see only closed-book labels. With the retrieval branch
cached, the cut can be placed where it maximises accuracy: skipping retrieval for a question is
right exactly when its closed-book answer is more likely correct than its answer with retrieval.

**Accuracy budget (the benchmark's default).** Retrieve as little as possible while the expected
accuracy stays within one point of always retrieving: the trade-off most deployments state
("save retrievals, lose at most a point"). The expected loss of skipping a question is
``P(rag correct | p) - p``, from the calibrated p(known) and the break-even fit below, so the
rule reads probabilities rather than a noisy step curve of 0/1 outcomes. The cut is chosen on
training-fold out-of-fold probabilities and, when shipped, is an ordinary ``probability:CUT``
operating point. The same budget applied to the training folds' observed accuracy is reported
beside it.

**Break-even.** Model the retrieval branch's accuracy as a function of the policy's own
calibrated p(known) - a logistic regression of retrieval correctness on ``logit p`` over the
training folds: ``logit P(rag correct | p) = a + b logit p``. Skipping is better where
``p > P(rag correct | p)``; with ``b < 1`` that holds exactly above ``p* = sigmoid(a / (1 - b))``.
It maximises expected accuracy with no knob; with ``b >= 1`` (retrieval gains at least as fast
as closed-book with p) no cut beats retrieving always. For a model that knows little it sits
close to always retrieving.

Also reported: the fixed ``probability:0.5`` point and the training-fold accuracy maximiser
(noisy: an arg-max over a step curve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, logit

from knowgate.errors import PolicyError

Rule = Callable[[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]], float]
_EPS = 1e-4


def _arrays(
    p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    p = np.asarray(p_known, dtype=np.float64).ravel()
    cb = np.asarray(cb_correct).ravel().astype(np.int64)
    rag = np.asarray(rag_correct).ravel().astype(np.int64)
    if not (p.size == cb.size == rag.size) or p.size == 0:
        raise PolicyError(f"{p.size} probabilities, {cb.size} and {rag.size} labels")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise PolicyError("p_known must be finite probabilities in [0, 1]")
    return p, cb, rag


@dataclass(frozen=True)
class BreakEven:
    """The fitted retrieval-accuracy curve and the threshold it implies.

    Attributes:
        intercept: ``a`` in ``logit P(rag correct | p) = a + b logit p``.
        slope: ``b``.
        threshold: ``p*``; 1.0 (retrieve always) when no cut beats retrieving.
    """

    intercept: float
    slope: float
    threshold: float


def fit_break_even(p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike) -> BreakEven:
    """Fit the retrieval-accuracy curve on calibration rows and solve for the break-even cut."""
    from sklearn.linear_model import LogisticRegression

    p, _, rag = _arrays(p_known, cb_correct, rag_correct)
    z = logit(np.clip(p, _EPS, 1 - _EPS))
    if rag.min() == rag.max():  # retrieval always right (or always wrong): a constant curve
        rate = float(rag[0])
        return BreakEven(float(logit(np.clip(rate, _EPS, 1 - _EPS))), 0.0, rate)
    model = LogisticRegression(C=1e4, max_iter=1000).fit(z[:, None], rag)
    a, b = float(model.intercept_[0]), float(model.coef_[0, 0])
    threshold = 1.0 if b >= 1.0 else float(expit(a / (1.0 - b)))
    return BreakEven(a, b, threshold)


def break_even_threshold(
    p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike
) -> float:
    """The default rule: skip retrieval where p(known) beats the modelled retrieval accuracy."""
    return fit_break_even(p_known, cb_correct, rag_correct).threshold


def _accuracy_by_cut(
    p: NDArray[np.float64], cb: NDArray[np.int64], rag: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """For every distinct cut (skip where p >= cut): cut, accuracy, retrieval rate."""
    order = np.argsort(p, kind="stable")
    ps, cbs, rags = p[order], cb[order], rag[order]
    n = p.size
    # Retrieving the m lowest: accuracy = (sum rag[:m] + sum cb[m:]) / n, for m = 0..n.
    rag_cum = np.concatenate([[0.0], np.cumsum(rags)])
    cb_tail = np.concatenate([np.cumsum(cbs[::-1])[::-1], [0.0]])
    acc = (rag_cum + cb_tail) / n
    # Valid cuts sit between distinct values: m = 0, positions where p changes, and n.
    starts = np.flatnonzero(np.diff(ps) > 0) + 1
    ms = np.concatenate([[0], starts, [n]])
    cuts = np.concatenate([[ps[0]], ps[starts], [np.nextafter(1.0, 2.0)]])
    return cuts, acc[ms], ms / n


def max_accuracy_threshold(
    p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike
) -> float:
    """The cut with the highest calibration accuracy (ties: the one retrieving least)."""
    p, cb, rag = _arrays(p_known, cb_correct, rag_correct)
    cuts, acc, rate = _accuracy_by_cut(p, cb, rag)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(min(1.0, cuts[best[np.argmin(rate[best])]]))


def accuracy_loss_threshold(tolerance: float) -> Rule:
    """Rule: retrieve least while calibration accuracy stays within ``tolerance`` of always."""
    if not 0 <= tolerance < 1:
        raise PolicyError(f"tolerance must be in [0, 1), got {tolerance}")

    def rule(p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike) -> float:
        p, cb, rag = _arrays(p_known, cb_correct, rag_correct)
        cuts, acc, rate = _accuracy_by_cut(p, cb, rag)
        ok = np.flatnonzero(acc >= rag.mean() - tolerance - 1e-12)
        return float(min(1.0, cuts[ok[np.argmin(rate[ok])]]))

    return rule


def expected_loss_threshold(tolerance: float) -> Rule:
    """Rule: retrieve least while the *expected* accuracy loss against always stays in budget.

    Skipping retrieval for a question with calibrated p(known) ``p`` changes its expected
    correctness from ``P(rag correct | p)`` (the break-even fit) to ``p``. The rule skips the
    highest-p questions for as long as the summed expected change, divided by the number of
    questions, stays at or below ``tolerance``. It reads probabilities, not 0/1 outcomes, so it
    does not chase the noise of a step curve the way :func:`accuracy_loss_threshold` does on small
    training sets (whose arg-min over many cuts is optimistic on held-out data).
    """
    if not 0 <= tolerance < 1:
        raise PolicyError(f"tolerance must be in [0, 1), got {tolerance}")

    def rule(p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike) -> float:
        p, cb, rag = _arrays(p_known, cb_correct, rag_correct)
        fit = fit_break_even(p, cb, rag)
        z = logit(np.clip(p, _EPS, 1 - _EPS))
        loss = expit(fit.intercept + fit.slope * z) - p  # expected loss of skipping each row
        order = np.argsort(-p, kind="stable")
        ps = p[order]
        spent = np.concatenate([[0.0], np.cumsum(loss[order])]) / p.size  # skip the m highest
        # Valid skip counts end where p changes (ties are skipped together), or at n.
        ends = np.concatenate([[0], np.flatnonzero(np.diff(ps) < 0) + 1, [p.size]])
        ok = ends[spent[ends] <= tolerance + 1e-12]
        m = int(ok.max())
        return float(np.nextafter(1.0, 2.0)) if m == 0 else float(ps[m - 1])

    return rule


def fixed_threshold(value: float) -> Rule:
    """Rule: a constant cut, whatever the data (``probability:VALUE``)."""
    if not 0 <= value <= 1:
        raise PolicyError(f"threshold must be in [0, 1], got {value}")

    def rule(p_known: ArrayLike, cb_correct: ArrayLike, rag_correct: ArrayLike) -> float:
        return float(value)

    return rule


ACCURACY_BUDGET = "expected accuracy within 1 pt of always"
DEFAULT_RULE = ACCURACY_BUDGET
RULES: dict[str, Rule] = {
    ACCURACY_BUDGET: expected_loss_threshold(0.01),
    "training accuracy within 1 pt of always": accuracy_loss_threshold(0.01),
    "break-even": break_even_threshold,
    "probability:0.5": fixed_threshold(0.5),
    "max training accuracy": max_accuracy_threshold,
}
"""Operating rules the benchmark evaluates (each cut chosen on training folds only)."""
