"""An A/B experiment: named arms, each a gating policy, and a sticky split of units between them."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from knowgate.errors import ExperimentError
from knowgate.experiments.assignment import (
    BUCKETS,
    Assignment,
    arm_for_bucket,
    bucket_of,
    bucket_ranges,
    normalize_unit_id,
    random_unit_id,
)
from knowgate.policy import Policy, policy_from_spec

if TYPE_CHECKING:
    from knowgate.config import ExperimentSpec


class Experiment:
    """A/B (or A/B/n) test of gating policies with sticky hash assignment.

    The first arm is the control: reports compare every other arm with it.

    Args:
        name: the experiment's name (the decision log keys traffic by it).
        arms: arm name -> policy, at least two, in order (control first).
        weights: relative traffic per arm (mapping by arm, or a sequence in arm order);
            ``None`` splits evenly.
        salt: hashing salt; ``None`` uses the name. Reusing a salt across experiments
            correlates their assignments; a new salt gives an independent shuffle.

    Raises:
        ExperimentError: fewer than two arms, a non-Policy arm, bad arm names or weights.
    """

    def __init__(
        self,
        name: str,
        arms: Mapping[str, Policy],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        salt: str | None = None,
    ) -> None:
        """Define the experiment (nothing is stored until a decision log registers it)."""
        if not isinstance(name, str) or not name.strip():
            raise ExperimentError("experiment name must be a non-empty string")
        if not isinstance(arms, Mapping) or len(arms) < 2:
            raise ExperimentError(
                f"experiment {name!r} needs at least two arms (control first), got "
                f"{len(arms) if isinstance(arms, Mapping) else type(arms).__name__}"
            )
        for arm, policy in arms.items():
            if not isinstance(arm, str) or not arm.strip():
                raise ExperimentError(f"experiment {name!r}: arm names must be non-empty strings")
            if not isinstance(policy, Policy):
                raise ExperimentError(
                    f"experiment {name!r}: arm {arm!r} must be a knowgate Policy, got "
                    f"{type(policy).__name__}"
                )
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise ExperimentError(f"experiment {name!r}: salt must be a non-empty string")
        names = list(arms)
        self.name = name
        self.salt = salt if salt is not None else name
        self.arms: Mapping[str, Policy] = MappingProxyType(dict(arms))
        raw = _weights_in_order(name, names, weights)
        self.ranges: Mapping[str, tuple[int, int]] = MappingProxyType(
            bucket_ranges(names, raw, BUCKETS)
        )
        self.weights: Mapping[str, float] = MappingProxyType(
            {arm: (stop - start) / BUCKETS for arm, (start, stop) in self.ranges.items()}
        )
        self.config_hash = hashlib.sha256(
            json.dumps(self.identity(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:16]

    # ------------------------------------------------------------------------ building
    @classmethod
    def from_spec(
        cls, spec: ExperimentSpec, *, model_id: str | None = None, force: bool = False
    ) -> Experiment:
        """Build from the router config's ``experiment`` section (policies loaded and checked).

        Each arm's policy comes from :func:`knowgate.policy.policy_from_spec`, but must be named
        (``path`` or ``name``): an arm never falls back to the model's bundled policy.

        Args:
            spec: the validated section.
            model_id: the router's model; fitted policies for another model are refused.
            force: accept policies fitted for another model.

        Raises:
            ExperimentError: an arm names no policy.
            PolicyError: a policy cannot be loaded or built.
        """
        arms = {}
        for arm, a in spec.arms.items():
            if a.policy.path is None and a.policy.name is None:
                raise ExperimentError(
                    f"experiment {spec.name!r}, arm {arm!r}: give policy.path or policy.name"
                )
            arms[arm] = policy_from_spec(a.policy, model_id=model_id, force=force)
        weights = {arm: a.weight for arm, a in spec.arms.items()}
        return cls(spec.name, arms, weights, spec.salt)

    # ---------------------------------------------------------------------------- reading
    @property
    def control(self) -> str:
        """The control arm (the first)."""
        return next(iter(self.arms))

    def identity(self) -> dict[str, Any]:
        """What the config hash covers: name, salt, bucket ranges and each arm's policy id.

        A policy id changes with anything that changes its decisions (parameters, threshold), so
        two definitions with the same identity assign and decide identically.
        """
        return {
            "name": self.name,
            "salt": self.salt,
            "buckets": BUCKETS,
            "arms": [
                [arm, start, stop, self.arms[arm].policy_id]
                for arm, (start, stop) in self.ranges.items()
            ],
        }

    def definition(self) -> dict[str, Any]:
        """The full, JSON-able definition the decision log stores (policy artifacts included)."""
        arms = []
        for arm, policy in self.arms.items():
            artifact = policy.to_dict()
            artifact.pop("created", None)  # a timestamp, not part of the policy
            arms.append(
                {
                    "arm": arm,
                    "weight": self.weights[arm],
                    "buckets": list(self.ranges[arm]),
                    "policy_id": policy.policy_id,
                    "policy": artifact,
                }
            )
        return {
            "name": self.name,
            "salt": self.salt,
            "buckets": BUCKETS,
            "config_hash": self.config_hash,
            "arms": arms,
        }

    def assign(self, unit_id: Any = None) -> Assignment:
        """The arm of one unit; a unit without an id (``None``) gets a random one, recorded.

        Raises:
            ExperimentError: the unit id is not a string/integer, is empty or too long.
        """
        if unit_id is None:
            uid, source = random_unit_id(), "random"
        else:
            uid, source = normalize_unit_id(unit_id), "given"
        bucket = bucket_of(self.salt, uid, BUCKETS)
        arm = arm_for_bucket(self.ranges, bucket)
        return Assignment(
            experiment=self.name,
            arm=arm,
            unit_id=uid,
            unit_id_source=source,  # type: ignore[arg-type]
            bucket=bucket,
            config_hash=self.config_hash,
            policy_id=self.arms[arm].policy_id,
        )

    def __repr__(self) -> str:
        split = ", ".join(f"{a}={w:g}" for a, w in self.weights.items())
        return f"<Experiment {self.name!r} {split} hash={self.config_hash}>"


def _weights_in_order(
    name: str, arms: list[str], weights: Mapping[str, float] | Sequence[float] | None
) -> list[float]:
    if weights is None:
        return [1.0] * len(arms)
    if isinstance(weights, Mapping):
        missing = [a for a in arms if a not in weights]
        extra = [a for a in weights if a not in arms]
        if missing or extra:
            raise ExperimentError(
                f"experiment {name!r}: weights must name exactly the arms {arms} "
                f"(missing {missing}, unknown {extra})"
            )
        values = [weights[a] for a in arms]
    elif isinstance(weights, Sequence) and not isinstance(weights, str):
        values = list(weights)
    else:
        raise ExperimentError(
            f"experiment {name!r}: weights must be a mapping or a sequence, got "
            f"{type(weights).__name__}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ExperimentError(f"experiment {name!r}: weights must be finite numbers: {values}")
    return [float(v) for v in values]
