"""A policy specification: how a config (or a caller) names the gating policy it wants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from knowgate.schema import StrictModel


class PolicySpec(StrictModel):
    """Which gating policy decides; :func:`knowgate.policy.policy_from_spec` builds it.

    Give ``path`` (a fitted policy JSON from ``knowgate calibrate``) or ``name`` with ``params``
    (a registry policy such as ``always``, ``never``, ``random``, ``threshold``). With neither, the
    policy bundled for the model is used (``resources/policies/<model>.json``); a model without a
    bundled policy falls back to ``always`` with a warning.

    Attributes:
        path: fitted policy artifact.
        name: registry name.
        params: registry parameters for ``name`` (the policy class's declared parameters and
            fit records, or ``path`` of a fitted artifact of that policy).
        threshold: override the policy's threshold (for p_known policies: retrieve when p_known
            is below it).
        force: use a policy fitted for a different model (its calibration will not transfer).
    """

    path: Path | None = None
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    force: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> PolicySpec:
        if self.path is not None and self.name is not None:
            raise ValueError("give either policy.path or policy.name, not both")
        if self.params and self.name is None:
            raise ValueError("policy.params needs policy.name")
        return self
