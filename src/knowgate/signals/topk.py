"""Uncertainty from the top-k log-probabilities a served model returns.

An OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama) returns, per generated token, the
chosen token's log-probability and the ``k`` largest log-probabilities of the distribution
(``top_logprobs``; servers cap ``k`` at about 20). Everything that reads only the chosen token
and the top two is exact - the chosen-token probability, the top-1/top-2 margin, the logit
margin - and is computed by the same functions as for a local model
(:mod:`knowgate.signals.uncertainty`), under the same feature names.

The entropy is not: the mass outside the top ``k`` is unknown. The features here use the entropy
of the top ``k`` renormalised to sum to one, which is a different quantity from the full
distribution's entropy (it ignores the tail, so it is smaller when the tail holds mass, and it
is bounded by ``log k``); they have their own names (``*_topk_entropy``) so a policy fitted on
one is never fed the other.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import SignalError
from knowgate.signals.capture import TopKStats


def _nonempty(stats: TopKStats, name: str) -> TopKStats:
    if len(stats) == 0:
        raise SignalError(f"{name}: needs at least one token")
    return stats


def topk_entropy(stats: TopKStats) -> NDArray[np.float64]:
    """Entropy (nats) of each position's top-k log-probabilities renormalised to sum to one.

    ``-inf`` padding (fewer than ``k`` alternatives) contributes nothing.
    """
    top = stats.top_logprobs
    if top.size == 0:
        return np.zeros(top.shape[0], dtype=np.float64)
    shifted = top - top[:, :1]  # the row maximum is the first column (rows are descending)
    weights = np.exp(shifted)
    q = weights / weights.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogq = np.where(q > 0, q * np.log(q), 0.0)
    return np.asarray(-plogq.sum(axis=1), dtype=np.float64)


def first_topk_entropy(stats: TopKStats) -> float:
    """Top-k entropy at the first position (the end of the prompt)."""
    return float(topk_entropy(_nonempty(stats, "first_topk_entropy"))[0])


def mean_topk_entropy(stats: TopKStats) -> float:
    """Mean top-k entropy over the positions."""
    return float(topk_entropy(_nonempty(stats, "mean_topk_entropy")).mean())


def max_topk_entropy(stats: TopKStats) -> float:
    """Largest top-k entropy over the positions: the least certain step."""
    return float(topk_entropy(_nonempty(stats, "max_topk_entropy")).max())
