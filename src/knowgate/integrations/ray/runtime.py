"""Connecting to Ray: an existing cluster by address, or a local instance for this process.

Ray is optional, so every entry point calls :func:`require_ray` first: without it the user gets
one line naming the extra instead of a ``ModuleNotFoundError`` from deep inside a command.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from pydantic import Field

from knowgate.errors import MissingPackageError
from knowgate.schema import StrictModel

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'knowgate[ray]'"


def require_ray(*parts: str) -> ModuleType:
    """Import ``ray`` (and ``ray.<part>`` for each of ``parts``), or say how to install it.

    Raises:
        MissingPackageError: Ray, or one of its parts (``serve``, ``data``), is not installed.
    """
    import importlib

    try:
        ray = importlib.import_module("ray")
        for part in parts:
            importlib.import_module(f"ray.{part}")
    except ImportError as exc:
        missing = exc.name or "ray"
        raise MissingPackageError(
            f"--ray needs Ray ({missing} is not installed): {INSTALL_HINT}"
        ) from exc
    return ray


class RayRuntime(StrictModel):
    """Where Ray work runs.

    Attributes:
        address: a running cluster (``ray://host:10001``, ``host:6379`` or ``auto``); ``None``
            starts a local instance for this process and stops it at the end.
        num_cpus: CPUs of a local instance (``None``: all of the machine's).
        object_store_mb: object store of a local instance in MiB (``None``: Ray's default, 30%
            of memory).
    """

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    object_store_mb: int | None = Field(default=None, ge=75)


@contextmanager
def ray_runtime(runtime: RayRuntime | None = None) -> Iterator[ModuleType]:
    """Ray, initialised for the ``with`` block.

    A Ray already initialised in this process (by the caller, a test, or a notebook) is used
    as it is and left running; otherwise Ray is initialised here and shut down on exit, so a
    command leaves no processes behind.
    """
    ray = require_ray()
    runtime = runtime or RayRuntime()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False}
    if runtime.address is not None:
        kwargs["address"] = runtime.address
    else:
        kwargs["num_cpus"] = runtime.num_cpus
        if runtime.object_store_mb is not None:
            kwargs["object_store_memory"] = runtime.object_store_mb * 1024 * 1024
    log.info("starting Ray (%s)", runtime.address or "local instance")
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
