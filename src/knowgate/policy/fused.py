"""The fused policy: standardised features -> logistic regression -> calibrated p(known).

Fitting lives in :mod:`knowgate.policy.fitting`; this module only applies stored parameters
with numpy, so deciding needs no scikit-learn estimator and the artifact is plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from knowgate.errors import PolicyError
from knowgate.policy.base import (
    Policy,
    check_threshold,
    content_digest,
    feature_matrix,
    short_model_name,
)
from knowgate.policy.calibration import AnyCalibrator, Calibrator
from knowgate.policy.decision import Decision
from knowgate.policy.operating_points import OperatingPoint
from knowgate.schema import StrictModel

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class LinearScorer(StrictModel):
    """A standardiser plus logistic-regression weights: ``logit = coef . (x - mean) / scale + b``.

    Attributes:
        feature_names: the features, in column order.
        scaler_mean: per-feature mean of the training data (``StandardScaler.mean_``).
        scaler_scale: per-feature standard deviation (``StandardScaler.scale_``), > 0.
        coefficients: logistic-regression weights on the standardised features.
        intercept: logistic-regression intercept.
    """

    feature_names: tuple[str, ...] = Field(min_length=1)
    scaler_mean: tuple[FiniteFloat, ...]
    scaler_scale: tuple[FiniteFloat, ...]
    coefficients: tuple[FiniteFloat, ...]
    intercept: FiniteFloat

    @model_validator(mode="after")
    def _consistent(self) -> LinearScorer:
        n = len(self.feature_names)
        lengths = {
            "scaler_mean": len(self.scaler_mean),
            "scaler_scale": len(self.scaler_scale),
            "coefficients": len(self.coefficients),
        }
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"{n} feature names but lengths {bad}")
        if len(set(self.feature_names)) != n:
            raise ValueError("feature names must be unique")
        if any(s <= 0 for s in self.scaler_scale):
            raise ValueError("scaler_scale values must be positive")
        return self

    def logits(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Logits of rows of ``x`` (columns in ``feature_names`` order)."""
        z = (x - np.asarray(self.scaler_mean)) / np.asarray(self.scaler_scale)
        return np.asarray(z @ np.asarray(self.coefficients) + self.intercept)


class FusedParams(StrictModel):
    """The fused policy's stored parameters."""

    scorer: LinearScorer
    calibrator: AnyCalibrator


class FusedPolicy(Policy):
    """Retrieve when the calibrated probability that the model knows is below the threshold.

    Threshold 0 never retrieves; threshold 1 always retrieves (even at p_known = 1).
    """

    name = "fused"
    params_model = FusedParams
    metadata_keys = (
        "threshold",
        "model_id",
        "operating_point",
        "training",
        "prompt_config",
        "signal_config",
    )

    def __init__(
        self,
        scorer: LinearScorer,
        calibrator: Calibrator,
        *,
        threshold: float = 0.5,
        model_id: str | None = None,
        operating_point: OperatingPoint | None = None,
        training: Mapping[str, Any] | None = None,
        prompt_config: Mapping[str, Any] | None = None,
        signal_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Assemble a fitted policy (see :func:`knowgate.policy.fitting.fit_fused`)."""
        self.scorer = scorer
        self.calibrator = calibrator
        self.threshold = check_threshold(threshold, low=0.0, high=1.0, what="p_known threshold")
        self.model_id = model_id
        self.operating_point = operating_point
        self.training = training
        self.prompt_config = prompt_config
        self.signal_config = signal_config
        self.required_features = scorer.feature_names
        self._id = f"fused-v1:{short_model_name(model_id)}:" + content_digest(
            [model_id, self.params(), self.threshold]
        )

    @property
    def policy_id(self) -> str:  # noqa: D102
        return self._id

    @property
    def calibration(self) -> str:
        """The calibration method (``isotonic``, ``sigmoid``, ``temperature`` or ``none``)."""
        return str(self.calibrator.method)  # type: ignore[attr-defined]

    def with_threshold(self, threshold: float) -> FusedPolicy:
        """The same fitted model cutting at another p_known threshold."""
        return FusedPolicy(
            self.scorer,
            self.calibrator,
            threshold=check_threshold(threshold, low=0.0, high=1.0, what="p_known threshold"),
            model_id=self.model_id,
            operating_point=None,
            training=self.training,
            prompt_config=self.prompt_config,
            signal_config=self.signal_config,
        )

    def p_known_matrix(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated p(known) for validated feature rows."""
        if x.ndim != 2 or x.shape[1] != len(self.required_features):
            raise PolicyError(
                f"expected a [n, {len(self.required_features)}] matrix, got {x.shape}"
            )
        return np.clip(self.calibrator.apply(self.scorer.logits(x)), 0.0, 1.0)

    def p_known(self, features: Sequence[Mapping[str, Any]]) -> NDArray[np.float64]:
        """Calibrated p(known) for feature mappings (validated like ``decide_batch``)."""
        return self.p_known_matrix(feature_matrix(features, self.required_features, self._id))

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        t = float(self.threshold if self.threshold is not None else 0.5)
        return probability_decisions(self.p_known_matrix(x), t, self._id)


def probability_decisions(
    p_known: NDArray[np.float64], threshold: float, policy_id: str
) -> list[Decision]:
    """Retrieve where calibrated p(known) is below ``threshold`` (threshold 1: always)."""
    always = threshold >= 1.0
    return [
        Decision(
            bool(pk < threshold or always),
            float(pk),
            threshold,
            policy_id,
            f"p_known {pk:.3f} {'<' if pk < threshold else '>='} threshold {threshold:.3f}"
            + (" (threshold 1: retrieve always)" if always and pk >= threshold else ""),
        )
        for pk in p_known
    ]
