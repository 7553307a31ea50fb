"""Popularity baseline: retrieve when the subject's popularity is below a fitted threshold.

After Mallen et al. 2023, "When Not to Trust Language Models" (adaptive retrieval by popularity).

Popularity is PopQA's ``s_pop`` (monthly Wikipedia page views of the subject), supplied as the
feature ``s_pop``. It is dataset metadata, not a model signal, so this is an evaluation
baseline: real traffic carries no page-view count.
"""

from __future__ import annotations

from typing import Any, Literal

from numpy.typing import ArrayLike
from pydantic import Field

from knowgate.errors import PolicyError
from knowgate.policy.operating_points import OperatingPoint
from knowgate.policy.threshold import Direction, ThresholdPolicy
from knowgate.schema import StrictModel

POPULARITY_FEATURE = "s_pop"


class PopularityParams(StrictModel):
    """Parameters of the popularity policy: ``{"value": N}`` alone is enough."""

    feature: Literal["s_pop"] = "s_pop"
    direction: Literal["higher_is_known"] = "higher_is_known"
    value: float = Field(allow_inf_nan=False)


class PopularityPolicy(ThresholdPolicy):
    """Retrieve when ``s_pop`` < ``value`` page views."""

    name = "popularity"
    params_model = PopularityParams

    def __init__(
        self,
        feature: str = POPULARITY_FEATURE,
        direction: Direction = "higher_is_known",
        value: float = 1000.0,
        **kwargs: Any,
    ) -> None:
        """Create the policy; ``value`` is the popularity cut in monthly page views."""
        if feature != POPULARITY_FEATURE or direction != "higher_is_known":
            raise PolicyError(
                f"the popularity policy reads {POPULARITY_FEATURE!r} with higher_is_known; "
                f"got {feature!r}, {direction!r} (use the threshold policy for other features)"
            )
        super().__init__(feature, direction, value, **kwargs)

    @classmethod
    def fit_popularity(
        cls,
        popularity: ArrayLike,
        labels: ArrayLike,
        operating_point: OperatingPoint,
        **kwargs: Any,
    ) -> PopularityPolicy:
        """Choose the page-view cut with an operating point on labelled data."""
        policy = cls.fit(
            popularity,
            labels,
            POPULARITY_FEATURE,
            operating_point,
            direction="higher_is_known",
            **kwargs,
        )
        assert isinstance(policy, PopularityPolicy)
        return policy
