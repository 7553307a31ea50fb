"""Base class for validated configuration: strict pydantic models loadable from YAML.

Every configurable part of knowgate is a :class:`StrictModel`, so a typo in a config key is an
error instead of a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from knowgate.errors import ConfigError


class StrictModel(BaseModel):
    """Immutable pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Validate ``data``, raising :class:`ConfigError` with every problem listed."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {source}:\n{_format_errors(exc)}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load and validate a YAML file."""
        data = load_yaml(path)
        return cls.from_dict(data, source=str(path))

    def to_yaml(self) -> str:
        """Serialise to YAML (round-trips through :meth:`from_yaml`)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def validation_problems(exc: ValidationError, *, root: str = "<root>") -> list[str]:
    """One ``"where: what"`` line per pydantic error (``root`` names an error on the whole value).

    Unknown keys read as ``unknown key`` rather than pydantic's wording, everywhere knowgate
    validates stored or user data.
    """
    return [
        f"{'.'.join(str(p) for p in err['loc']) or root}: "
        + ("unknown key" if err["type"] == "extra_forbidden" else err["msg"])
        for err in exc.errors()
    ]


def _format_errors(exc: ValidationError) -> str:
    return "\n".join(f"  - {problem}" for problem in validation_problems(exc))
