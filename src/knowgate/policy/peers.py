"""The field's adaptive-retrieval gates, as named policies knowgate is compared with.

Each is a one-signal threshold (:class:`~knowgate.policy.threshold.ThresholdPolicy`) whose
signal and direction the method fixes, so configs, experiment arms and ``knowgate ab replay``
can name them:

- ``targ`` - TARG (arXiv 2511.09803, TMLR 2026): the mean top-1 minus top-2 logit margin of a
  short no-context draft (``draft_mean_logit_margin``; higher = known), or its mean token
  entropy (``draft_mean_entropy``; lower = known), against a threshold the paper calibrates to
  a retrieval budget (``ThresholdPolicy.fit`` with a ``budget:R`` operating point). Needs the
  router's draft gate.
- ``flare`` - FLARE (Jiang et al. 2023; LangChain's FlareChain, ``min_prob=0.2``): retrieve when
  any draft token's probability is below ``value`` (``draft_min_prob``). Needs the draft gate.
- ``sampling-consistency`` - SelfCheckGPT / SeaKR / SUGAR: agreement of K answers sampled at
  temperature 1 with the greedy one (``sample_agreement`` or ``sample_lexical_similarity``).
- ``self-routing`` - the LangGraph adaptive-RAG / LlamaIndex router pattern: P(yes) when the
  model is asked whether it can answer from memory (``self_report_p_yes``), 0.5 by default.

The last two read features that cost extra model calls (sampled answers, a second prompt): a
router refuses them, naming the missing features; they are evaluation policies that ``knowgate
bench`` scores from its peers branch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

from pydantic import Field, model_validator

from knowgate.errors import PolicyError
from knowgate.policy.threshold import Direction, ThresholdPolicy
from knowgate.schema import StrictModel

TARG_MARGIN: Final = "draft_mean_logit_margin"
TARG_ENTROPY: Final = "draft_mean_entropy"
FLARE_FEATURE: Final = "draft_min_prob"
FLARE_MIN_PROB: Final = 0.2
"""FlareChain's default ``min_prob``: retrieve when a draft token is less likely than this."""
SAMPLE_AGREEMENT: Final = "sample_agreement"
SAMPLE_LEXICAL_SIMILARITY: Final = "sample_lexical_similarity"
SELF_REPORT_P_YES: Final = "self_report_p_yes"


class _PeerPolicy(ThresholdPolicy):
    """A threshold policy whose feature (and so direction) the method fixes."""

    features: ClassVar[dict[str, Direction]]

    def __init__(
        self,
        feature: str | None = None,
        direction: Direction | None = None,
        value: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the feature is one the method reads, in the method's direction."""
        feature = feature or next(iter(self.features))
        if feature not in self.features:
            raise PolicyError(
                f"the {self.name} policy reads {' or '.join(map(repr, self.features))}, "
                f"not {feature!r} (use the threshold policy for other features)"
            )
        expected = self.features[feature]
        if direction is not None and direction != expected:
            raise PolicyError(f"{self.name} on {feature!r} is {expected}, not {direction}")
        if value is None:
            raise PolicyError(f"the {self.name} policy needs a threshold value")
        super().__init__(feature, expected, value, **kwargs)


class TargParams(StrictModel):
    """TARG: the draft's mean logit margin (default) or mean entropy, and the cut."""

    feature: Literal["draft_mean_logit_margin", "draft_mean_entropy"] = TARG_MARGIN
    direction: Direction
    value: float = Field(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, data: Any) -> Any:
        if isinstance(data, dict):
            feature = data.get("feature", TARG_MARGIN)
            expected = TargPolicy.features.get(feature)
            if expected is not None and data.get("direction") is None:
                data = {**data, "direction": expected}
            elif expected is not None and data["direction"] != expected:
                raise ValueError(f"{feature} is {expected}, not {data['direction']}")
        return data


class TargPolicy(_PeerPolicy):
    """TARG: retrieve when the draft's margin is low (or its entropy high)."""

    name = "targ"
    params_model = TargParams
    features: ClassVar[dict[str, Direction]] = {
        TARG_MARGIN: "higher_is_known",
        TARG_ENTROPY: "lower_is_known",
    }


class FlareParams(StrictModel):
    """FLARE: the smallest draft-token probability, and ``min_prob`` (FlareChain's 0.2)."""

    feature: Literal["draft_min_prob"] = FLARE_FEATURE
    direction: Literal["higher_is_known"] = "higher_is_known"
    value: float = Field(default=FLARE_MIN_PROB, ge=0.0, le=1.0, allow_inf_nan=False)


class FlarePolicy(_PeerPolicy):
    """FLARE: retrieve when any draft token's probability is below ``value``."""

    name = "flare"
    params_model = FlareParams
    features: ClassVar[dict[str, Direction]] = {FLARE_FEATURE: "higher_is_known"}

    def __init__(
        self,
        feature: str | None = None,
        direction: Direction | None = None,
        value: float = FLARE_MIN_PROB,
        **kwargs: Any,
    ) -> None:
        """FlareChain's rule by default: retrieve when a draft token's probability is < 0.2."""
        super().__init__(feature, direction, value, **kwargs)


class SamplingParams(StrictModel):
    """Sampling consistency: agreement (default) or lexical similarity, and the cut."""

    feature: Literal["sample_agreement", "sample_lexical_similarity"] = SAMPLE_AGREEMENT
    direction: Literal["higher_is_known"] = "higher_is_known"
    value: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)


class SamplingConsistencyPolicy(_PeerPolicy):
    """Retrieve when sampled answers agree with the greedy one less than ``value``."""

    name = "sampling-consistency"
    params_model = SamplingParams
    features: ClassVar[dict[str, Direction]] = {
        SAMPLE_AGREEMENT: "higher_is_known",
        SAMPLE_LEXICAL_SIMILARITY: "higher_is_known",
    }

    def __init__(
        self,
        feature: str | None = None,
        direction: Direction | None = None,
        value: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """Retrieve when fewer than half the samples agree, unless another cut is given."""
        super().__init__(feature, direction, value, **kwargs)


class SelfRoutingParams(StrictModel):
    """Self-routing: P(yes) to "can you answer from memory?", and the cut."""

    feature: Literal["self_report_p_yes"] = SELF_REPORT_P_YES
    direction: Literal["higher_is_known"] = "higher_is_known"
    value: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)


class SelfRoutingPolicy(_PeerPolicy):
    """Retrieve when the model's P(yes) that it can answer from memory is below ``value``."""

    name = "self-routing"
    params_model = SelfRoutingParams
    features: ClassVar[dict[str, Direction]] = {SELF_REPORT_P_YES: "higher_is_known"}

    def __init__(
        self,
        feature: str | None = None,
        direction: Direction | None = None,
        value: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """Retrieve when P(yes) < 0.5, unless another cut is given."""
        super().__init__(feature, direction, value, **kwargs)


PEER_POLICIES: tuple[type[ThresholdPolicy], ...] = (
    TargPolicy,
    FlarePolicy,
    SamplingConsistencyPolicy,
    SelfRoutingPolicy,
)
