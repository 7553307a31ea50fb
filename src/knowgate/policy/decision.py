"""The outcome of a gating policy for one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Whether to retrieve, and why.

    Attributes:
        retrieve: True when the model is judged *not* to know (``p_known`` below ``threshold``,
            or the policy's rule says so).
        p_known: calibrated probability that the closed-book answer is correct; ``None`` for
            policies that do not estimate it (always, never, random, raw-feature thresholds).
        threshold: the cut the decision used (on ``p_known`` for probabilistic policies, on the
            raw feature for threshold/popularity policies, the retrieval rate for ``random``).
        policy_id: the deciding policy's stable id (for traces and A/B logs).
        reason: one human-readable line.
    """

    retrieve: bool
    p_known: float | None
    threshold: float | None
    policy_id: str
    reason: str
