"""Helpers shared by CLI commands: error reporting, JSON output, model loading with progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from knowgate.errors import KnowgateError

if TYPE_CHECKING:
    from knowgate.evaluation.branches.cache import BatchExecutor
    from knowgate.models import LanguageModel, ModelConfig, RemoteModel

console = Console(stderr=True)
T = TypeVar("T")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn knowgate errors into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except KnowgateError as exc:
        # Escaped: messages quote things like pip install 'knowgate[ray]', not Rich markup.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=2) from exc


def print_json(data: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def with_status(message: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` under a spinner on stderr (long model loads show progress)."""
    with console.status(message):
        return fn()


MODEL_HELP = (
    "Packaged name, hub id, local dir, .gguf file, a served model openai:<base_url>#<name>, or "
    "a router YAML config (its model section: a served model's remote settings, prompts)."
)


def load_language_model(source: str | ModelConfig) -> LanguageModel | RemoteModel:
    """Load a model, showing a spinner (the first load of a GGUF model dequantizes it).

    ``source`` is a model source, a router YAML config whose ``model`` section is used, or an
    already read model section. A served model (``openai:<base_url>#<model>`` or a
    ``model.remote`` section) loads nothing: its server is asked for its ``/models`` entry, so a
    wrong URL or name fails here.
    """
    from pathlib import Path

    from knowgate.config import load_config
    from knowgate.models import LanguageModel, ModelConfig, RemoteModel

    if isinstance(source, ModelConfig):
        config = source
    elif source.endswith((".yaml", ".yml")) and Path(source).is_file():
        config = load_config(source).model
    else:
        config = ModelConfig(source=source)
    if config.remote is not None:
        remote = RemoteModel(config)
        with_status(f"contacting {config.source}...", remote.identity)
        return remote
    return with_status(
        f"loading {config.source} (first load dequantizes and caches it)...",
        lambda: LanguageModel.load(config),
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


RAY_OPTION = typer.Option(
    False,
    "--ray",
    help="Answer the uncached questions in parallel Ray actors, one model each "
    "(pip install 'knowgate[ray]'); same caches as local.",
)
WORKERS_OPTION = typer.Option(2, "--workers", min=1, help="With --ray: actors (one model each).")
RAY_ADDRESS_OPTION = typer.Option(
    None, "--ray-address", help="With --ray: a running cluster (default: a local instance)."
)


@contextmanager
def ray_batches(
    use_ray: bool, model: LanguageModel | RemoteModel, *, workers: int, address: str | None
) -> Iterator[BatchExecutor | None]:
    """Ray actors answering the branches' batches for the ``with`` block (``None``: no ``--ray``).

    Ray starts (or joins ``address``) on the first uncached batch, not before.

    Raises:
        MissingPackageError: Ray is not installed.
        ConfigError: ``model`` is served (its server runs the passes; nothing to spread).
    """
    if not use_ray:
        yield None
        return
    from knowgate.integrations.ray import RayRuntime
    from knowgate.integrations.ray.batch import BatchStats, RayBatchConfig, RayBatchRunner

    stats = BatchStats()
    settings, runtime = RayBatchConfig(workers=workers), RayRuntime(address=address)
    with RayBatchRunner(model.config, settings, stats, runtime=runtime) as runner:
        yield runner
    if stats.questions:
        console.print(
            f"Ray: {stats.workers} actors loaded the model in {stats.startup_seconds:.0f} s, then "
            f"answered {stats.questions} questions in {stats.seconds:.0f} s "
            f"({stats.questions_per_second:.2f}/s); peak memory per actor "
            f"{', '.join(f'{m} MiB' for m in stats.actor_peak_rss_mib) or '-'}",
            highlight=False,
        )
