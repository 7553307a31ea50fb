"""Every policy by name, and the one way to get a policy from a specification.

:func:`policy_from_spec` turns a :class:`~knowgate.policy.spec.PolicySpec` (a config's
``policy:`` section, an experiment arm) into a policy: a saved artifact (``path``), a registry
policy (``name`` + ``params``), or the policy bundled for the model. :func:`build_policy` and
:func:`load_policy` are its two shorthands, for a spec with only a name or only a path.

The registry reads each class's declaration (``params_model``, ``metadata_keys``; see
:class:`~knowgate.policy.base.Policy`), so building from parameters and loading an artifact
treat every policy alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from knowgate.errors import PolicyError
from knowgate.policy.artifact import read_artifact, validate_envelope
from knowgate.policy.base import Policy
from knowgate.policy.baselines import AlwaysRetrieve, NeverRetrieve, RandomRetrieve
from knowgate.policy.fused import FusedPolicy
from knowgate.policy.oracle import OraclePolicy
from knowgate.policy.peers import PEER_POLICIES
from knowgate.policy.popularity import PopularityPolicy
from knowgate.policy.probe import ProbePolicy
from knowgate.policy.spec import PolicySpec
from knowgate.policy.threshold import ThresholdPolicy

log = logging.getLogger(__name__)

_CLASSES: tuple[type[Policy], ...] = (
    AlwaysRetrieve,
    NeverRetrieve,
    RandomRetrieve,
    ThresholdPolicy,
    FusedPolicy,
    ProbePolicy,
    PopularityPolicy,
    OraclePolicy,
    *PEER_POLICIES,
)
POLICY_REGISTRY: dict[str, type[Policy]] = {cls.name: cls for cls in _CLASSES}


def policy_from_spec(
    spec: PolicySpec, *, model_id: str | None = None, force: bool = False
) -> Policy:
    """The policy a specification names - the one way from a spec (or config) to a policy.

    Args:
        spec: ``path`` (a saved artifact), ``name`` with ``params`` (a registry policy), or
            neither (the policy bundled for ``model_id``; ``always``, with a warning, when there
            is none); then ``threshold`` overrides the cut.
        model_id: the model the caller runs; a policy fitted for another model is refused.
        force: accept a policy fitted for another model (so does ``spec.force``).

    Raises:
        PolicyError: an unknown name, bad parameters, a missing or invalid artifact, or a policy
            fitted for another model.
    """
    force = force or spec.force
    if spec.path is not None:
        policy = _from_file(spec.path, model_id=model_id, force=force)
    elif spec.name is not None:
        policy = _from_name(spec.name, spec.params, model_id=model_id, force=force)
    else:
        policy = _bundled_or_always(model_id, force=force)
    if spec.threshold is not None:
        policy = policy.with_threshold(spec.threshold)
    return policy


def build_policy(name: str, **params: Any) -> Policy:
    """A registry policy: ``policy_from_spec(PolicySpec(name=name, params=params))``.

    ``params`` are the class's declared parameters and fit records: ``random``: ``rate``,
    ``seed``; ``threshold``: ``feature``, ``direction``, ``value`` (and ``model_id``);
    ``popularity``: ``value`` (page views); ``fused``: ``scorer``, ``calibrator``,
    ``threshold`` (and the other fit records); ``always``, ``never``, ``oracle``: none. Any
    policy may instead be given as ``path=`` to its fitted artifact (with ``model_id``/``force``).

    Raises:
        PolicyError: unknown name, or bad parameters.
    """
    if not isinstance(name, str) or not name:
        raise PolicyError(f"policy name must be a non-empty string, got {name!r}")
    return policy_from_spec(PolicySpec(name=name, params=params))


def load_policy(path: str | Path, *, model_id: str | None = None, force: bool = False) -> Policy:
    """A saved policy: ``policy_from_spec(PolicySpec(path=path), model_id=..., force=...)``.

    Raises:
        PolicyError: missing or invalid file, or a model mismatch (see
            :func:`policy_from_artifact`).
    """
    return policy_from_spec(PolicySpec(path=Path(path)), model_id=model_id, force=force)


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
    cls = _registered(art.policy, source)
    if model_id is not None and art.model_id is not None and art.model_id != model_id and not force:
        raise PolicyError(
            f"{source}: policy was fitted for model {art.model_id!r}, not {model_id!r}; "
            "its probabilities mean nothing for another model. Refit it with "
            "`knowgate calibrate`, or force loading (force=True / --force-policy)."
        )
    records: dict[str, Any] = {
        "model_id": art.model_id,
        "operating_point": art.operating_point,
        "training": art.training,
        "prompt_config": art.prompt_config,
        "signal_config": art.signal_config,
    }
    stray = sorted(k for k, v in records.items() if v is not None and k not in cls.metadata_keys)
    if stray:
        raise PolicyError(f"{source}: a {art.policy} policy has no {', '.join(stray)}")
    if "threshold" in cls.metadata_keys:
        records["threshold"] = art.threshold
    metadata = {k: v for k, v in records.items() if k in cls.metadata_keys}
    policy = _construct(cls, dict(art.params), metadata, source)
    if art.threshold != policy.threshold:
        if art.threshold is None:
            raise PolicyError(f"{source}: a {art.policy} policy needs a threshold")
        raise PolicyError(
            f"{source}: threshold {art.threshold} disagrees with the policy's parameters "
            f"(which cut at {policy.threshold})"
        )
    if list(art.required_features) and tuple(art.required_features) != policy.required_features:
        raise PolicyError(
            f"{source}: required_features {list(art.required_features)} do not match the "
            f"policy's features {list(policy.required_features)}"
        )
    if tuple(art.required_vectors) != policy.required_vectors:
        raise PolicyError(
            f"{source}: required_vectors {list(art.required_vectors)} do not match the "
            f"policy's vector signals {list(policy.required_vectors)}"
        )
    if art.policy_id != policy.policy_id:
        raise PolicyError(
            f"{source}: policy_id {art.policy_id!r} does not match its contents (expected "
            f"{policy.policy_id!r}); the file was edited by hand or corrupted. If the edit was "
            "intended, set policy_id to the expected value."
        )
    return policy


def bundled_policy_path(model_id: str | None) -> Path | None:
    """The policy fitted and shipped for a packaged model, if there is one."""
    if not model_id:
        return None
    candidate = resources.files("knowgate").joinpath(f"resources/policies/{model_id}.json")
    return Path(str(candidate)) if candidate.is_file() else None


# ---------------------------------------------------------------------------------- internals
def _registered(name: str, source: str) -> type[Policy]:
    if name not in POLICY_REGISTRY:
        raise PolicyError(f"{source}: unknown policy {name!r}; known: {', '.join(POLICY_REGISTRY)}")
    return POLICY_REGISTRY[name]


def _construct(
    cls: type[Policy], params: dict[str, Any], metadata: dict[str, Any], source: str
) -> Policy:
    try:
        return cls.from_params(params, **metadata)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from exc


def _from_file(path: Path, *, model_id: str | None, force: bool) -> Policy:
    return policy_from_artifact(
        read_artifact(path), source=str(path), model_id=model_id, force=force
    )


def _from_name(
    name: str, params: Mapping[str, Any], *, model_id: str | None, force: bool
) -> Policy:
    source = f"policy {name!r}"
    cls = _registered(name, "policy registry")
    rest = dict(params)
    if "path" in rest:
        path = rest.pop("path")
        model_id = rest.pop("model_id", model_id)
        force = bool(rest.pop("force", force))
        if rest:
            raise PolicyError(f"{source}: with path=, only model_id and force are allowed")
        policy = _from_file(Path(path), model_id=model_id, force=force)
        if policy.name != name:
            raise PolicyError(f"{path} holds a {policy.name!r} policy, not {name!r}")
        return policy
    declared = cls.params_model.model_fields
    metadata = {k: rest.pop(k) for k in cls.metadata_keys if k in rest}
    unknown = sorted(set(rest) - set(declared))
    if unknown and not declared:
        raise PolicyError(f"{source} takes no parameters, got {unknown}")
    if unknown:
        known = [*declared, *cls.metadata_keys]
        raise PolicyError(
            f"{source}: unknown {name}-policy parameter(s) {unknown}; known: {', '.join(known)}"
        )
    required = [f for f, info in declared.items() if info.is_required()]
    if required and not rest:
        raise PolicyError(
            f"{source} must be fitted or given its parameters: pass path=<policy.json> (see "
            f"`knowgate calibrate`) or {', '.join(required)}"
        )
    return _construct(cls, rest, metadata, source)


def _bundled_or_always(model_id: str | None, *, force: bool) -> Policy:
    bundled = bundled_policy_path(model_id)
    if bundled is not None:
        return _from_file(bundled, model_id=model_id, force=force)
    log.warning(
        "no policy configured and none bundled for %s: retrieving for every query. Fit one with "
        "`knowgate calibrate --model %s`.",
        model_id or "this model",
        model_id or "<model>",
    )
    return AlwaysRetrieve()
