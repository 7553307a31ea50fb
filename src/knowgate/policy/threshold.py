"""Single-signal threshold: retrieve when one feature is on the "unknown" side of a value.

The 1-D baseline of adaptive-retrieval studies (e.g. AdaRAGUE's per-method thresholds,
Moskvoretskii et al. 2025, arXiv 2501.12835): a fused policy should beat the best single signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field
from sklearn.metrics import roc_auc_score

from knowgate.errors import PolicyError
from knowgate.policy.base import Policy, check_threshold, content_digest, short_model_name
from knowgate.policy.decision import Decision
from knowgate.policy.operating_points import OperatingPoint, choose_threshold
from knowgate.schema import StrictModel

Direction = Literal["higher_is_known", "lower_is_known"]


class ThresholdParams(StrictModel):
    """Stored parameters of a threshold policy."""

    feature: str = Field(min_length=1)
    direction: Direction
    value: float = Field(allow_inf_nan=False)


class ThresholdPolicy(Policy):
    """Retrieve when ``feature`` < ``value`` (``higher_is_known``) or > ``value`` (lower).

    ``Decision.threshold`` is ``value`` in the feature's own units; ``p_known`` is ``None``.
    """

    name = "threshold"
    params_model: ClassVar[type[StrictModel]] = ThresholdParams
    metadata_keys = ("model_id", "operating_point", "training", "prompt_config", "signal_config")

    def __init__(
        self,
        feature: str,
        direction: Direction,
        value: float,
        *,
        model_id: str | None = None,
        operating_point: OperatingPoint | None = None,
        training: Mapping[str, Any] | None = None,
        prompt_config: Mapping[str, Any] | None = None,
        signal_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the policy (or fit one with :meth:`fit`)."""
        if not isinstance(feature, str) or not feature:
            raise PolicyError("threshold policy needs a feature name")
        if direction not in ("higher_is_known", "lower_is_known"):
            raise PolicyError(
                f"direction must be 'higher_is_known' or 'lower_is_known', got {direction!r}"
            )
        self.feature = feature
        self.direction: Direction = direction
        self.threshold = check_threshold(value, low=None, high=None, what="threshold value")
        self.model_id = model_id
        self.operating_point = operating_point
        self.training = training
        self.prompt_config = prompt_config
        self.signal_config = signal_config
        self.required_features = (feature,)

    @property
    def sign(self) -> float:
        """+1 when higher values mean "known", else -1 (score = sign * feature)."""
        return 1.0 if self.direction == "higher_is_known" else -1.0

    @property
    def value(self) -> float:
        """The cut, in the feature's own units (the ``value`` parameter; also ``threshold``)."""
        return float(self.threshold)  # type: ignore[arg-type]

    @property
    def policy_id(self) -> str:  # noqa: D102
        digest = content_digest([self.name, self.model_id, self.params()])
        return f"{self.name}-v1:{short_model_name(self.model_id)}:{self.feature}:{digest}"

    def with_threshold(self, threshold: float) -> ThresholdPolicy:
        """The same feature and direction, another cut value."""
        return type(self).from_params(
            {**self.params(), "value": threshold},
            model_id=self.model_id,
            training=self.training,
            prompt_config=self.prompt_config,
            signal_config=self.signal_config,
        )

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        value = float(self.threshold)  # type: ignore[arg-type]
        pid = self.policy_id
        op = "<" if self.direction == "higher_is_known" else ">"
        out = []
        for (v,) in x:
            retrieve = bool(self.sign * v < self.sign * value)
            rel = op if retrieve else ("<=" if op == ">" else ">=")
            out.append(
                Decision(retrieve, None, value, pid, f"{self.feature} {v:.4g} {rel} {value:.4g}")
            )
        return out

    @classmethod
    def fit(
        cls,
        values: ArrayLike,
        labels: ArrayLike,
        feature: str,
        operating_point: OperatingPoint,
        *,
        direction: Direction | None = None,
        model_id: str | None = None,
        **kwargs: Any,
    ) -> ThresholdPolicy:
        """Choose the direction (by AUROC, unless given) and the cut (by the operating point).

        Raises:
            PolicyError: mismatched inputs, a single class when the direction must be learnt.
        """
        x = np.asarray(values, dtype=np.float64).ravel()
        y = np.asarray(labels).ravel()
        if x.shape != y.shape or x.size == 0:
            raise PolicyError(f"{x.size} values but {y.size} labels")
        if direction is None:
            if len(np.unique(y)) < 2:
                raise PolicyError("learning a direction needs both correct and wrong answers")
            auc = roc_auc_score(y, x)
            direction = "higher_is_known" if auc >= 0.5 else "lower_is_known"
        sign = 1.0 if direction == "higher_is_known" else -1.0
        choice = choose_threshold(operating_point, sign * x, y, probabilistic=False)
        training = {
            "n_samples": int(x.size),
            "n_positive": int(np.sum(y == 1)),
            "calibration_retrieval_rate": choice.retrieval_rate,
            "calibration_accuracy_without_retrieval": choice.accuracy_without_retrieval,
            **choice.details,
            **dict(kwargs.pop("training", None) or {}),
        }
        return cls(
            feature,
            direction,
            sign * choice.threshold,
            model_id=model_id,
            operating_point=operating_point,
            training=training,
            **kwargs,
        )
