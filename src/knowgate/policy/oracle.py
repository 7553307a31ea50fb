"""The oracle (evaluation only): retrieve exactly when the closed-book answer is wrong.

It reads the label from the feature ``oracle_correct`` (1 = the closed-book answer is correct),
which only an offline evaluation can supply. It is the ceiling every gate is compared with:
with the low closed-book accuracy of small models, even a perfect gate skips few retrievals.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from knowgate.policy.base import Policy
from knowgate.policy.decision import Decision

ORACLE_FEATURE = "oracle_correct"


class OraclePolicy(Policy):
    """Retrieve iff ``features["oracle_correct"] < 0.5``; ``p_known`` is the label itself."""

    name = "oracle"
    required_features = (ORACLE_FEATURE,)

    @property
    def policy_id(self) -> str:  # noqa: D102
        return "oracle"

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        out = []
        for (label,) in x:
            known = bool(label >= 0.5)
            out.append(
                Decision(
                    not known,
                    1.0 if known else 0.0,
                    0.5,
                    "oracle",
                    "oracle: closed-book answer is " + ("correct" if known else "wrong"),
                )
            )
        return out
