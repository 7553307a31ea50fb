"""The one interface every gating policy implements: features in, :class:`Decision` out.

Policies are pure: they see feature dictionaries (or matrices built from them), never a model.
Inputs are validated strictly - a missing feature, a non-number or a NaN is a
:class:`~knowgate.errors.PolicyError` naming the feature - because a silently imputed signal
would make a retrieval decision no one can explain.

Policies are declarative (the pattern of sentence-transformers' ``config_keys``): each class
names its parameter model (``params_model``, whose fields are constructor arguments and the
artifact's ``params``) and the fit records its constructor takes (``metadata_keys``), so the
registry builds, saves and loads every policy the same way, with no case per class.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from knowgate._version import __version__
from knowgate.errors import ConfigError, PolicyError
from knowgate.policy.artifact import ARTIFACT_FORMAT, FORMAT_VERSION, save_artifact
from knowgate.policy.decision import Decision
from knowgate.policy.operating_points import OperatingPoint, parse_operating_point
from knowgate.schema import StrictModel, validation_problems

#: Every fit record a policy constructor may take as a keyword (``metadata_keys`` choose).
METADATA_KEYS = (
    "threshold",
    "model_id",
    "operating_point",
    "training",
    "prompt_config",
    "signal_config",
)


def feature_value(features: Mapping[str, Any], name: str, policy_id: str) -> float:
    """One validated feature value: present, a real number (not bool), finite."""
    if name not in features:
        raise PolicyError(f"policy {policy_id} needs feature {name!r}, which is missing")
    value = features[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyError(
            f"policy {policy_id}: feature {name!r} must be a number, got {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise PolicyError(f"policy {policy_id}: feature {name!r} is {value} (must be finite)")
    return value


def feature_matrix(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], policy_id: str
) -> NDArray[np.float64]:
    """``[len(rows), len(names)]`` matrix of validated feature values."""
    if isinstance(rows, Mapping):
        raise PolicyError("decide_batch takes a sequence of feature mappings, not one mapping")
    out = np.empty((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise PolicyError(
                f"policy {policy_id}: features must be a mapping of name -> number, "
                f"got {type(row).__name__} (row {i})"
            )
        for j, name in enumerate(names):
            out[i, j] = feature_value(row, name, policy_id)
    return out


def vector_rows(
    rows: Sequence[Mapping[str, Any]], name: str, size: int, policy_id: str
) -> NDArray[np.float64]:
    """``[len(rows), size]`` matrix of one validated vector signal per row.

    Raises:
        PolicyError: the vector is missing, not a 1-D array of ``size`` finite numbers.
    """
    if isinstance(rows, Mapping):
        raise PolicyError("decide_batch takes a sequence of feature mappings, not one mapping")
    out = np.empty((len(rows), size), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or name not in row:
            raise PolicyError(
                f"policy {policy_id} needs the vector signal {name!r}, which is missing (row {i})"
            )
        try:
            value = np.asarray(row[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"policy {policy_id}: {name!r} is not a numeric vector") from exc
        if value.shape != (size,):
            raise PolicyError(
                f"policy {policy_id}: {name!r} must hold {size} numbers, got shape {value.shape}"
            )
        if not np.all(np.isfinite(value)):
            raise PolicyError(f"policy {policy_id}: {name!r} has NaN or inf values")
        out[i] = value
    return out


def short_model_name(model_id: str | None) -> str:
    """A readable model tag for ids: the last path component of a hub id or path."""
    if not model_id:
        return "any"
    return model_id.rstrip("/").replace("\\", "/").split("/")[-1] or "any"


def content_digest(content: Any, length: int = 6) -> str:
    """Short SHA-256 of canonical JSON: the part of a policy id that changes with its contents."""
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class NoParams(StrictModel):
    """The parameter model of a policy that takes no parameters."""


class Policy(ABC):
    """A gating policy: decides per request whether to call the retriever.

    Class attributes (the declaration the registry reads):
        name: the registry name (``always``, ``fused``, ...).
        params_model: the parameter model; its fields are keyword arguments of the constructor
            and attributes of the instance, and make up the artifact's ``params``.
        metadata_keys: which fit records (of :data:`METADATA_KEYS`) the constructor takes as
            keyword arguments; an artifact stores them beside ``params``.

    Attributes:
        policy_id: stable, human-readable id, e.g. ``fused-v1:smollm2-135m:3f2a9c``; it changes
            whenever anything that affects decisions changes (parameters, threshold).
        required_features: feature names the policy reads (signals-registry names; ``s_pop``
            and ``oracle_correct`` for the evaluation-only policies).
        required_vectors: vector signals it reads (``hidden_state_layer14_at_question_end``;
            probes); the router computes them only for such policies and keeps them out of
            traces.
        model_id: the model it was fitted for; ``None`` when it is model-agnostic.
        threshold: the current cut (see :class:`Decision`), or ``None``.
        operating_point: how ``threshold`` was chosen, when it was fitted.
        training: free-form record of the fit (sample counts, held-out metrics) kept in artifacts.
        prompt_config: the prompt configuration of the closed-book runs it was fitted on.
        signal_config: the signal configuration its features were computed with (a
            :class:`~knowgate.signals.SignalConfig` as a dict), when it was fitted.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[StrictModel]] = NoParams
    metadata_keys: ClassVar[tuple[str, ...]] = ()
    required_features: tuple[str, ...] = ()
    required_vectors: tuple[str, ...] = ()
    model_id: str | None = None
    threshold: float | None = None
    operating_point: OperatingPoint | None = None
    training: Mapping[str, Any] | None = None
    prompt_config: Mapping[str, Any] | None = None
    signal_config: Mapping[str, Any] | None = None

    @property
    @abstractmethod
    def policy_id(self) -> str:
        """Stable id derived from the policy's contents."""

    @abstractmethod
    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        """Decisions for validated rows of ``required_features``."""

    def params(self) -> dict[str, Any]:
        """The declared parameters, JSON-able (the artifact's ``params``)."""
        values = {name: getattr(self, name) for name in self.params_model.model_fields}
        return self.params_model.model_validate(values).model_dump(mode="json")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **metadata: Any) -> Self:
        """Build from declared parameters (validated by ``params_model``) and fit records.

        Args:
            params: the parameters, as stored in an artifact or given to ``build_policy``.
            **metadata: fit records named in ``metadata_keys``; ``None`` values are left out,
                and an operating point may be given in any form of
                :func:`~knowgate.policy.operating_points.parse_operating_point`.

        Raises:
            PolicyError: unknown or invalid parameters or fit records.
        """
        undeclared = sorted(k for k, v in metadata.items() if k not in cls.metadata_keys)
        if undeclared:
            raise PolicyError(
                f"a {cls.name} policy takes no {', '.join(undeclared)}"
                + (f" (it takes {', '.join(cls.metadata_keys)})" if cls.metadata_keys else "")
            )
        records = {k: v for k, v in metadata.items() if v is not None}
        if "operating_point" in records:
            try:
                records["operating_point"] = parse_operating_point(records["operating_point"])
            except ConfigError as exc:
                raise PolicyError(str(exc)) from exc
        try:
            validated = cls.params_model.model_validate(dict(params))
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc, root="params"))
            raise PolicyError(f"invalid {cls.name} parameters: {problems}") from exc
        values = {name: getattr(validated, name) for name in type(validated).model_fields}
        return cls(**values, **records)

    def decide(self, features: Mapping[str, Any]) -> Decision:
        """Decide for one request.

        Raises:
            PolicyError: a required feature is missing, not a number, or not finite.
        """
        if not isinstance(features, Mapping):
            raise PolicyError(
                f"policy {self.policy_id}: features must be a mapping of name -> number, "
                f"got {type(features).__name__}"
            )
        return self.decide_batch([features])[0]

    def decide_batch(self, features: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Decide for many requests (validated as a whole before any decision is made)."""
        x = feature_matrix(features, self.required_features, self.policy_id)
        if x.shape[0] == 0:
            return []
        return self._decide_matrix(x)

    def with_threshold(self, threshold: float) -> Policy:
        """A copy that cuts at ``threshold`` instead (per-request override).

        Raises:
            PolicyError: the policy has no threshold, or the value is out of range.
        """
        raise PolicyError(f"policy {self.name!r} has no threshold to override")

    def to_dict(self) -> dict[str, Any]:
        """The versioned artifact as a JSON-able dict (see :mod:`knowgate.policy.artifact`)."""
        op = self.operating_point
        return {
            "format": ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "policy_id": self.policy_id,
            "model_id": self.model_id,
            "prompt_config": dict(self.prompt_config) if self.prompt_config else None,
            "required_features": list(self.required_features),
            "required_vectors": list(self.required_vectors),
            "params": self.params(),
            "threshold": self.threshold,
            "operating_point": op.model_dump(mode="json") if op is not None else None,
            "training": dict(self.training) if self.training else None,
            "signal_config": dict(self.signal_config) if self.signal_config else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "knowgate_version": __version__,
        }

    def save(self, path: str | Path) -> None:
        """Write the policy as versioned, human-readable JSON (atomically; never pickle)."""
        save_artifact(self.to_dict(), Path(path))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.policy_id}>"


def check_threshold(value: Any, *, low: float | None, high: float | None, what: str) -> float:
    """Validate a threshold override: a finite number within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise PolicyError(f"{what} must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise PolicyError(f"{what} must be in [{low}, {high}], got {value}")
    return value
