"""Policies by name, so configs can say ``policy: fused``; loading saved artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from knowgate.errors import ConfigError, PolicyError
from knowgate.policy.artifact import parse_operating_point as _artifact_operating_point
from knowgate.policy.artifact import read_artifact, validate_envelope
from knowgate.policy.base import Policy
from knowgate.policy.baselines import AlwaysRetrieve, NeverRetrieve, RandomRetrieve
from knowgate.policy.fused import FusedPolicy
from knowgate.policy.operating_points import operating_point_from_dict
from knowgate.policy.oracle import OraclePolicy
from knowgate.policy.popularity import PopularityPolicy
from knowgate.policy.threshold import ThresholdPolicy
from knowgate.schema import validation_problems

POLICY_REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        AlwaysRetrieve,
        NeverRetrieve,
        RandomRetrieve,
        ThresholdPolicy,
        FusedPolicy,
        PopularityPolicy,
        OraclePolicy,
    )
}

_FITTED = (ThresholdPolicy, FusedPolicy)  # take params + metadata keyword arguments


def _format_validation(exc: ValidationError) -> str:
    return "; ".join(validation_problems(exc, root="params"))


def _from_params(
    name: str, params: dict[str, Any], metadata: dict[str, Any], source: str
) -> Policy:
    cls = POLICY_REGISTRY[name]
    try:
        if issubclass(cls, _FITTED):
            return cls.from_params(params, **metadata)
        if params and cls is not RandomRetrieve:
            raise PolicyError(
                f"{source}: policy {name!r} takes no parameters, got {sorted(params)}"
            )
        if cls is RandomRetrieve:
            unknown = sorted(set(params) - {"rate", "seed"})
            if unknown:
                raise PolicyError(f"{source}: unknown random-policy parameter(s) {unknown}")
            return RandomRetrieve(**params)
        return cls()
    except ValidationError as exc:
        raise PolicyError(
            f"{source}: invalid {name} parameters: {_format_validation(exc)}"
        ) from exc
    except TypeError as exc:
        raise PolicyError(f"{source}: invalid {name} parameters: {exc}") from exc


def policy_from_artifact(
    data: dict[str, Any],
    *,
    source: str = "policy artifact",
    model_id: str | None = None,
    force: bool = False,
) -> Policy:
    """Rebuild a policy from an artifact dict, validating it completely.

    Raises:
        PolicyError: malformed artifact, unknown policy, contents that do not match the stored
            ``policy_id``, or fitted for another model than ``model_id`` (unless ``force``).
    """
    art = validate_envelope(data, source)
    if art.policy not in POLICY_REGISTRY:
        raise PolicyError(
            f"{source}: unknown policy {art.policy!r}; known: {', '.join(POLICY_REGISTRY)}"
        )
    if model_id is not None and art.model_id is not None and art.model_id != model_id and not force:
        raise PolicyError(
            f"{source}: policy was fitted for model {art.model_id!r}, not {model_id!r}; "
            "its probabilities mean nothing for another model. Refit it with "
            "`knowgate calibrate`, or force loading (force=True / --force-policy)."
        )
    metadata: dict[str, Any] = {}
    cls = POLICY_REGISTRY[art.policy]
    if issubclass(cls, _FITTED):
        metadata = {
            "model_id": art.model_id,
            "operating_point": _artifact_operating_point(art.operating_point, source),
            "training": art.training,
            "prompt_config": art.prompt_config,
        }
        if cls is FusedPolicy:
            if art.threshold is None:
                raise PolicyError(f"{source}: a fused policy needs a threshold")
            metadata["threshold"] = art.threshold
    policy = _from_params(art.policy, dict(art.params), metadata, source)
    if (
        issubclass(cls, ThresholdPolicy)
        and art.threshold is not None
        and art.threshold != policy.threshold
    ):
        raise PolicyError(
            f"{source}: threshold {art.threshold} disagrees with params.value {policy.threshold}"
        )
    if list(art.required_features) and tuple(art.required_features) != policy.required_features:
        raise PolicyError(
            f"{source}: required_features {list(art.required_features)} do not match the "
            f"policy's features {list(policy.required_features)}"
        )
    if art.policy_id != policy.policy_id:
        raise PolicyError(
            f"{source}: policy_id {art.policy_id!r} does not match its contents (expected "
            f"{policy.policy_id!r}); the file was edited by hand or corrupted. If the edit was "
            "intended, set policy_id to the expected value."
        )
    return policy


def load_policy(path: str | Path, *, model_id: str | None = None, force: bool = False) -> Policy:
    """Load a saved policy.

    Args:
        path: the JSON artifact.
        model_id: the model the caller runs; a policy fitted for another model is refused.
        force: load even when fitted for another model.

    Raises:
        PolicyError: missing or invalid file, or a model mismatch (see
            :func:`policy_from_artifact`).
    """
    return policy_from_artifact(
        read_artifact(path), source=str(path), model_id=model_id, force=force
    )


def build_policy(name: str, **params: Any) -> Policy:
    """A policy by registry name.

    ``always``, ``never``, ``oracle``: no parameters. ``random``: ``rate``, ``seed``.
    ``threshold``: ``feature``, ``direction``, ``value`` (optional ``model_id``).
    ``popularity``: ``value`` (page views). ``fused``: ``path`` to a fitted artifact (plus
    optional ``model_id``/``force``), or its stored ``scorer``/``calibrator``/``threshold``.
    Any fitted policy may also be given as ``path=``.

    Raises:
        PolicyError: unknown name, or bad parameters.
    """
    if name not in POLICY_REGISTRY:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(POLICY_REGISTRY)}")
    source = f"policy {name!r}"
    if "path" in params:
        path = params.pop("path")
        model_id = params.pop("model_id", None)
        force = bool(params.pop("force", False))
        if params:
            raise PolicyError(f"{source}: with path=, only model_id and force are allowed")
        policy = load_policy(path, model_id=model_id, force=force)
        if policy.name != name:
            raise PolicyError(f"{path} holds a {policy.name!r} policy, not {name!r}")
        return policy
    cls = POLICY_REGISTRY[name]
    if cls is FusedPolicy:
        meta_keys = ("threshold", "model_id", "operating_point", "training", "prompt_config")
        metadata = {k: params.pop(k) for k in meta_keys if k in params}
        if not params:
            raise PolicyError(
                "the fused policy must be fitted: pass path=<policy.json> (see `knowgate "
                "calibrate`) or its scorer/calibrator parameters"
            )
        if isinstance(metadata.get("operating_point"), dict):
            try:
                metadata["operating_point"] = operating_point_from_dict(metadata["operating_point"])
            except ConfigError as exc:
                raise PolicyError(str(exc)) from exc
        return _from_params(name, params, metadata, source)
    if issubclass(cls, ThresholdPolicy):
        meta = {k: params.pop(k) for k in ("model_id",) if k in params}
        return _from_params(name, params, meta, source)
    return _from_params(name, params, {}, source)
