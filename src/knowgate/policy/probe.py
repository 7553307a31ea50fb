"""The hidden-state probe: a calibrated logistic regression on one residual-stream vector.

Probing-RAG (Baek et al., NAACL Findings 2025), HALT (2026) and Ji et al. (BlackboxNLP 2024)
read whether a model knows the answer from its hidden state: a linear classifier on the residual
stream of one layer at one prompt position. Here it reads the state the gate's own prefill
captures - no extra forward pass - as the vector signal ``hidden_state_layer{L}_at_{position}``
(:mod:`knowgate.signals`). Optionally a *combiner* stacks the probe's logit with scalar signals
(sparsity, uncertainty): ``logit = combiner([probe_logit, *scalars])``.

Like the fused policy, everything is stored as plain numbers (standardiser, weights, calibrator)
and applied with numpy; which layer, position and regularisation it uses is chosen by inner
cross-validation when it is fitted (:mod:`knowgate.policy.selection`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from knowgate.errors import PolicyError, SignalError
from knowgate.policy.base import (
    Policy,
    check_threshold,
    content_digest,
    feature_matrix,
    short_model_name,
    vector_rows,
)
from knowgate.policy.calibration import AnyCalibrator, Calibrator
from knowgate.policy.decision import Decision
from knowgate.policy.fused import LinearScorer, probability_decisions
from knowgate.policy.operating_points import OperatingPoint
from knowgate.schema import StrictModel
from knowgate.signals import parse_vector_signal

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PROBE_LOGIT = "probe_logit"
"""The combiner's name for the probe's logit (not a signal: computed by the policy itself)."""


class VectorScorer(StrictModel):
    """Standardise one vector signal, then logistic-regression weights on its units.

    Attributes:
        vector: the vector signal (``hidden_state_layer14_at_question_end``).
        scaler_mean: per-unit mean of the training vectors.
        scaler_scale: per-unit standard deviation, > 0.
        coefficients: weights on the standardised units.
        intercept: the intercept.
    """

    vector: str
    scaler_mean: tuple[FiniteFloat, ...] = Field(min_length=1)
    scaler_scale: tuple[FiniteFloat, ...]
    coefficients: tuple[FiniteFloat, ...]
    intercept: FiniteFloat

    @model_validator(mode="after")
    def _consistent(self) -> VectorScorer:
        try:
            parse_vector_signal(self.vector)
        except SignalError as exc:
            raise ValueError(str(exc)) from exc
        n = len(self.scaler_mean)
        if len(self.scaler_scale) != n or len(self.coefficients) != n:
            raise ValueError(
                f"{n} means but {len(self.scaler_scale)} scales and {len(self.coefficients)} "
                "coefficients"
            )
        if any(s <= 0 for s in self.scaler_scale):
            raise ValueError("scaler_scale values must be positive")
        return self

    @property
    def size(self) -> int:
        """The vector's length."""
        return len(self.coefficients)

    def logits(self, v: NDArray[np.floating]) -> NDArray[np.float64]:
        """Logits of vectors ``v`` (``[n, size]``)."""
        z = (np.asarray(v, dtype=np.float64) - np.asarray(self.scaler_mean)) / np.asarray(
            self.scaler_scale
        )
        return np.asarray(z @ np.asarray(self.coefficients) + self.intercept)


class ProbeParams(StrictModel):
    """The probe policy's stored parameters."""

    probe: VectorScorer
    combiner: LinearScorer | None = None
    calibrator: AnyCalibrator

    @model_validator(mode="after")
    def _combiner_reads_probe(self) -> ProbeParams:
        if self.combiner is not None and PROBE_LOGIT not in self.combiner.feature_names:
            raise ValueError(
                f"a probe's combiner must read {PROBE_LOGIT!r} (without it, fit a fused policy)"
            )
        return self


class ProbePolicy(Policy):
    """Retrieve when the calibrated p(known) of a hidden-state probe is below the threshold.

    The probe reads one vector signal; with a combiner, also the combiner's scalar features.
    Threshold 0 never retrieves; threshold 1 always retrieves.
    """

    name = "probe"
    params_model = ProbeParams
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
        probe: VectorScorer,
        calibrator: Calibrator,
        combiner: LinearScorer | None = None,
        *,
        threshold: float = 0.5,
        model_id: str | None = None,
        operating_point: OperatingPoint | None = None,
        training: Mapping[str, Any] | None = None,
        prompt_config: Mapping[str, Any] | None = None,
        signal_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Assemble a fitted probe (see :func:`knowgate.policy.fitting.fit_policy`)."""
        if combiner is not None and PROBE_LOGIT not in combiner.feature_names:
            raise PolicyError(f"a probe's combiner must read {PROBE_LOGIT!r}")
        self.probe = probe
        self.calibrator = calibrator
        self.combiner = combiner
        self.threshold = check_threshold(threshold, low=0.0, high=1.0, what="p_known threshold")
        self.model_id = model_id
        self.operating_point = operating_point
        self.training = training
        self.prompt_config = prompt_config
        self.signal_config = signal_config
        self.required_vectors = (probe.vector,)
        self.required_features = (
            tuple(n for n in combiner.feature_names if n != PROBE_LOGIT) if combiner else ()
        )
        self._id = f"probe-v1:{short_model_name(model_id)}:" + content_digest(
            [model_id, self.params(), self.threshold]
        )

    @property
    def policy_id(self) -> str:  # noqa: D102
        return self._id

    def with_threshold(self, threshold: float) -> ProbePolicy:
        """The same fitted probe cutting at another p_known threshold."""
        return ProbePolicy(
            self.probe,
            self.calibrator,
            self.combiner,
            threshold=check_threshold(threshold, low=0.0, high=1.0, what="p_known threshold"),
            model_id=self.model_id,
            training=self.training,
            prompt_config=self.prompt_config,
            signal_config=self.signal_config,
        )

    def logits_matrix(
        self, vectors: NDArray[np.float64], scalars: NDArray[np.float64] | None = None
    ) -> NDArray[np.float64]:
        """Raw logits of validated inputs: ``[n, size]`` vectors and ``[n, k]`` scalars."""
        z = self.probe.logits(vectors)
        if self.combiner is None:
            return z
        columns = []
        for name in self.combiner.feature_names:
            if name == PROBE_LOGIT:
                columns.append(z)
            else:
                assert scalars is not None
                columns.append(scalars[:, self.required_features.index(name)])
        return self.combiner.logits(np.column_stack(columns))

    def p_known(self, features: Sequence[Mapping[str, Any]]) -> NDArray[np.float64]:
        """Calibrated p(known) for feature mappings holding the vector signal (and scalars)."""
        vectors = vector_rows(features, self.probe.vector, self.probe.size, self._id)
        scalars = feature_matrix(features, self.required_features, self._id)
        return np.clip(self.calibrator.apply(self.logits_matrix(vectors, scalars)), 0.0, 1.0)

    def decide_batch(self, features: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Decide for many requests; each mapping holds the vector signal and any scalars."""
        if isinstance(features, Mapping):
            raise PolicyError("decide_batch takes a sequence of feature mappings, not one mapping")
        if not features:
            return []
        t = float(self.threshold if self.threshold is not None else 0.5)
        return probability_decisions(self.p_known(features), t, self._id)

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        raise PolicyError("a probe decides from feature mappings holding its vector signal")
