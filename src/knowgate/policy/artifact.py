"""Versioned, human-readable policy artifacts (JSON; never pickle).

Layout (format version 2)::

    {
      "format": "knowgate-policy", "format_version": 2,
      "policy": "fused", "policy_id": "fused-v1:smollm2-135m:3f2a9c",
      "model_id": "smollm2-135m", "prompt_config": {...},
      "required_features": ["next_token_entropy", ...],
      "required_vectors": [],
      "params": {"scorer": {...}, "calibrator": {"method": "isotonic", ...}},
      "threshold": 0.31, "operating_point": {"kind": "budget", ...},
      "training": {"n_samples": 2936, "n_positive": 312, "metrics": {...}},
      "signal_config": {"positions": ["prompt_end"], "near_zero_eps": 0.01, ...},
      "created": "2026-...Z", "knowgate_version": "0.1.0"
    }

Version 2 added ``required_vectors`` (vector signals a probe reads) and ``signal_config`` (the
signal configuration the features were computed with). Version 1 files (without them) are still
read.

This module is the file format alone - the envelope schema, strict JSON reading and atomic
writing - and imports no policy: :meth:`Policy.to_dict <knowgate.policy.base.Policy.to_dict>`
fills the envelope, and the registry (:func:`knowgate.policy.policy_from_artifact`) validates the
policy-specific parts (``params``, operating point, ``policy_id``) and raises
:class:`~knowgate.errors.PolicyError` saying what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from knowgate.errors import PolicyError
from knowgate.jsonio import atomic_write_text
from knowgate.schema import StrictModel, validation_problems

ARTIFACT_FORMAT = "knowgate-policy"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class PolicyArtifact(StrictModel):
    """The envelope every saved policy shares (``params`` is validated by the policy class)."""

    format: Literal["knowgate-policy"]
    format_version: int
    policy: str = Field(min_length=1)
    policy_id: str = Field(min_length=1)
    model_id: str | None = None
    prompt_config: dict[str, Any] | None = None
    required_features: tuple[str, ...] = ()
    required_vectors: tuple[str, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    operating_point: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    signal_config: dict[str, Any] | None = None
    created: str | None = None
    knowgate_version: str | None = None


def save_artifact(artifact: dict[str, Any], path: Path) -> None:
    """Write JSON atomically (temporary file + rename in the same directory)."""
    try:
        text = json.dumps(artifact, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy cannot be saved as strict JSON: {exc}") from exc
    atomic_write_text(path, text)


def _reject_constants(token: str) -> float:
    raise ValueError(f"{token} is not allowed in a policy artifact")


def read_artifact(path: str | Path) -> dict[str, Any]:
    """Read a policy JSON file (strict JSON: no NaN/Infinity)."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constants)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise PolicyError(f"{path}: not a valid policy JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def validate_envelope(data: dict[str, Any], source: str) -> PolicyArtifact:
    """Check the format marker and version before anything else, then every envelope field."""
    if data.get("format") != ARTIFACT_FORMAT:
        raise PolicyError(
            f"{source}: not a knowgate policy (expected format {ARTIFACT_FORMAT!r}, "
            f"got {data.get('format')!r})"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PolicyError(f"{source}: format_version must be an integer, got {version!r}")
    if version not in READABLE_VERSIONS:
        newer = " (written by a newer knowgate?)" if version > FORMAT_VERSION else ""
        raise PolicyError(
            f"{source}: unsupported policy format_version {version}{newer}; "
            f"this knowgate reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if version == 1 and ("required_vectors" in data or "signal_config" in data):
        raise PolicyError(
            f"{source}: required_vectors and signal_config need format_version 2, not 1"
        )
    try:
        return PolicyArtifact.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc))
        raise PolicyError(f"{source}: invalid policy artifact: {problems}") from exc
