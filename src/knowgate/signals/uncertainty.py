"""Token-probability uncertainty statistics.

Calibrated token-probability uncertainty (entropy, max-prob, margin) is a strong and cheap
self-knowledge signal: it matched or beat multi-call adaptive-retrieval pipelines at a fraction of
their cost (Moskvoretskii et al., ACL 2025, "Adaptive Retrieval Without Self-Knowledge?",
arXiv 2501.12835). The per-token summaries are recorded by the model runner during decoding;
the functions here aggregate them. Larger entropy / smaller probability and margin = less certain.

Functions that read only the chosen token and the top two (probabilities, margins) take any
:class:`~knowgate.signals.capture.TokenProbabilities`, so a served model's top-k log-probabilities
(:class:`~knowgate.signals.capture.TopKStats`) give the same features as a local model's full
distribution; the entropy functions need the full distribution (:class:`TokenStats`).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import SignalError
from knowgate.signals.capture import TokenProbabilities, TokenStats

StatsT = TypeVar("StatsT", bound=TokenProbabilities)


def _nonempty(stats: StatsT, name: str) -> StatsT:
    if len(stats) == 0:
        raise SignalError(f"{name}: needs at least one token")
    return stats


def mean_entropy(stats: TokenStats) -> float:
    """Mean next-token entropy over the positions (nats)."""
    return float(_nonempty(stats, "mean_entropy").entropy.mean())


def max_entropy(stats: TokenStats) -> float:
    """Largest next-token entropy over the positions: the least certain step."""
    return float(_nonempty(stats, "max_entropy").entropy.max())


def min_prob(stats: TokenProbabilities) -> float:
    """Smallest chosen-token probability: the weakest link of the answer."""
    return float(np.exp(_nonempty(stats, "min_prob").logprob.min()))


def mean_prob(stats: TokenProbabilities) -> float:
    """Mean chosen-token probability."""
    return float(np.exp(_nonempty(stats, "mean_prob").logprob).mean())


def mean_logprob(stats: TokenProbabilities) -> float:
    """Mean chosen-token log-probability (length-normalised sequence log-likelihood)."""
    return float(_nonempty(stats, "mean_logprob").logprob.mean())


def perplexity(stats: TokenProbabilities) -> float:
    """exp(-mean log-prob): the sequence perplexity of the answer."""
    return float(np.exp(-mean_logprob(stats)))


def first_margin(stats: TokenProbabilities) -> float:
    """Top-1 minus top-2 probability at the first position."""
    return float(_nonempty(stats, "first_margin").margin[0])


def first_entropy(stats: TokenStats) -> float:
    """Entropy at the first position."""
    return float(_nonempty(stats, "first_entropy").entropy[0])


def first_prob(stats: TokenProbabilities) -> float:
    """Chosen-token probability at the first position (the max-prob under greedy decoding)."""
    return float(np.exp(_nonempty(stats, "first_prob").logprob[0]))


def _logit_margins(stats: TokenProbabilities, name: str) -> NDArray[np.float64]:
    return _nonempty(stats, name).logit_margin


def first_logit_margin(stats: TokenProbabilities) -> float:
    """Top-1 minus top-2 logit at the first position."""
    return float(_logit_margins(stats, "first_logit_margin")[0])


def mean_logit_margin(stats: TokenProbabilities) -> float:
    """Mean top-1 minus top-2 logit over the positions: TARG's margin signal.

    TARG (arXiv 2511.09803) gates retrieval on the margin of a short no-context draft and finds it
    the robust default for instruction-tuned models.
    """
    return float(_logit_margins(stats, "mean_logit_margin").mean())


def min_logit_margin(stats: TokenProbabilities) -> float:
    """Smallest top-1 minus top-2 logit over the positions: the closest call of the answer."""
    return float(_logit_margins(stats, "min_logit_margin").min())
