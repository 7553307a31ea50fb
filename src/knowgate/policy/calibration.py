"""Calibrators: map a fused logit to a probability that the closed-book answer is correct.

Fitted with scikit-learn / SciPy (isotonic regression; Platt's sigmoid as a 1-D logistic
regression on the logit; temperature scaling as a 1-parameter likelihood fit), then stored as a
handful of numbers and applied with plain numpy, so a saved policy needs no pickled estimator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, TypeAdapter, ValidationError, model_serializer, model_validator
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from knowgate.errors import PolicyError
from knowgate.schema import StrictModel, validation_problems

CalibrationMethod = Literal["isotonic", "sigmoid", "temperature", "none"]
CALIBRATION_METHODS: tuple[str, ...] = ("isotonic", "sigmoid", "temperature", "none")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Calibrator(StrictModel, ABC):
    """A fitted map from logits to probabilities (serialisable parameters only)."""

    @abstractmethod
    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities for ``logits``."""


class IdentityCalibrator(Calibrator):
    """No calibration: the logistic regression's own probability, sigmoid(logit)."""

    method: Literal["none"] = "none"

    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:  # noqa: D102
        return np.asarray(expit(np.asarray(logits, dtype=np.float64)))


ISOTONIC_TIE_BREAK = 1e-6
"""Weight of ``sigmoid(logit)`` blended into isotonic probabilities to make them strictly
increasing: isotonic regression is a step function, and its flat steps tie hundreds of questions
at one p(known), so a retrieval budget could not be met (``budget:0.8`` retrieved 47% of 999
TriviaQA questions) and the policy's ranking lost its resolution. A millionth keeps the
probabilities calibrated to six decimals."""


class IsotonicCalibrator(Calibrator):
    """Piecewise-linear monotone map through isotonic-regression breakpoints (clipped at ends).

    ``tie_break`` > 0 makes the map strictly increasing: the output is
    ``(1 - tie_break) * step(logit) + tie_break * sigmoid(logit)``, so questions on one flat step
    keep the order of their logits (fitted calibrators use :data:`ISOTONIC_TIE_BREAK`; files
    written before it have none).
    """

    method: Literal["isotonic"] = "isotonic"
    x_thresholds: tuple[FiniteFloat, ...]
    y_thresholds: tuple[FiniteFloat, ...]
    tie_break: float = Field(default=0.0, ge=0.0, le=1e-3, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _omit_zero_tie_break(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.tie_break:
            data.pop("tie_break", None)  # files written before tie-breaking keep their ids
        return data

    @model_validator(mode="after")
    def _monotone(self) -> IsotonicCalibrator:
        x, y = np.asarray(self.x_thresholds), np.asarray(self.y_thresholds)
        if x.size == 0 or x.size != y.size:
            raise ValueError(
                f"isotonic breakpoints need equally many x and y values (got {x.size}, {y.size})"
            )
        if np.any(np.diff(x) <= 0):
            raise ValueError("isotonic x breakpoints must be strictly increasing")
        if np.any(np.diff(y) < 0):
            raise ValueError("isotonic y breakpoints must be non-decreasing")
        if np.any((y < 0) | (y > 1)):
            raise ValueError("isotonic y breakpoints must be probabilities in [0, 1]")
        return self

    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:  # noqa: D102
        z = np.asarray(logits, dtype=np.float64)
        step = np.interp(z, self.x_thresholds, self.y_thresholds)
        if not self.tie_break:
            return np.asarray(step)
        return np.asarray((1.0 - self.tie_break) * step + self.tie_break * expit(z))


class SigmoidCalibrator(Calibrator):
    """Platt scaling: sigmoid(slope * logit + intercept)."""

    method: Literal["sigmoid"] = "sigmoid"
    slope: FiniteFloat
    intercept: FiniteFloat

    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:  # noqa: D102
        z = np.asarray(logits, dtype=np.float64)
        return np.asarray(expit(self.slope * z + self.intercept))


class TemperatureCalibrator(Calibrator):
    """Temperature scaling: sigmoid(logit / temperature)."""

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0.0, allow_inf_nan=False)

    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:  # noqa: D102
        z = np.asarray(logits, dtype=np.float64)
        return np.asarray(expit(z / self.temperature))


AnyCalibrator = Annotated[
    IdentityCalibrator | IsotonicCalibrator | SigmoidCalibrator | TemperatureCalibrator,
    Field(discriminator="method"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyCalibrator)


def calibrator_from_dict(data: Any) -> Calibrator:
    """Validate stored calibrator parameters."""
    try:
        return _ADAPTER.validate_python(data)  # type: ignore[no-any-return,unused-ignore]
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, root="calibrator"))
        raise PolicyError(f"invalid calibrator: {problems}") from exc


def fit_calibrator(method: str, logits: ArrayLike, labels: ArrayLike) -> Calibrator:
    """Fit ``method`` on (ideally out-of-fold) logits and 0/1 labels.

    Raises:
        PolicyError: unknown method, mismatched or non-finite inputs, or a single class.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.float64)
    if method not in CALIBRATION_METHODS:
        raise PolicyError(
            f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}"
        )
    if z.shape != y.shape or z.size == 0:
        raise PolicyError(f"calibration needs as many labels as logits (got {z.size}, {y.size})")
    if not np.all(np.isfinite(z)):
        raise PolicyError("calibration logits contain NaN or inf")
    if len(np.unique(y)) < 2:
        raise PolicyError("calibration needs both correct and wrong closed-book answers")
    if method == "none":
        return IdentityCalibrator()
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(z, y)
        x_t, y_t = np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)
        if x_t.size == 1:  # constant fit: duplicate so interpolation stays defined
            x_t, y_t = np.array([x_t[0], x_t[0] + 1.0]), np.array([y_t[0], y_t[0]])
        return IsotonicCalibrator(
            x_thresholds=tuple(float(v) for v in x_t),
            y_thresholds=tuple(float(v) for v in y_t),
            tie_break=ISOTONIC_TIE_BREAK,
        )
    if method == "sigmoid":
        lr = LogisticRegression(C=np.inf)
        lr.fit(z[:, None], y.astype(int))
        return SigmoidCalibrator(slope=float(lr.coef_[0, 0]), intercept=float(lr.intercept_[0]))

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(-(y * log_expit(scaled) + (1 - y) * log_expit(-scaled)).mean())

    result = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded")
    return TemperatureCalibrator(temperature=float(np.exp(result.x)))
