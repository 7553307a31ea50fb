"""Helpers shared by CLI commands: error reporting, JSON output, model loading with progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from knowgate.errors import KnowgateError

if TYPE_CHECKING:
    from knowgate.models import LanguageModel, ModelConfig

console = Console(stderr=True)
T = TypeVar("T")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn knowgate errors into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except KnowgateError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from exc


def print_json(data: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def with_status(message: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` under a spinner on stderr (long model loads show progress)."""
    with console.status(message):
        return fn()


def load_language_model(source: str | ModelConfig) -> LanguageModel:
    """Load a model, showing a spinner (the first load of a GGUF model dequantizes it)."""
    from knowgate.models import LanguageModel

    name = source if isinstance(source, str) else source.source
    return with_status(
        f"loading {name} (first load dequantizes and caches it)...",
        lambda: LanguageModel.load(source),
    )


def check_calibration(method: str) -> None:
    """Refuse an unknown ``--calibration`` before any model is loaded."""
    from knowgate.errors import ConfigError
    from knowgate.policy.calibration import CALIBRATION_METHODS

    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )


def dataset_names(data: list[str]) -> list[str]:
    """``--data`` values: repeated and/or comma-separated names or paths, in order."""
    return [p.strip() for item in data for p in item.split(",") if p.strip()]
