"""The HTTP front for a router (FastAPI + uvicorn; ``pip install knowgate[serve]``).

Services that are not written in Python - or that should not load a model per worker - call one
knowgate process over HTTP. The app holds one :class:`~knowgate.routing.QueryRouter`: a
:class:`~knowgate.routing.Router`, or an :class:`~knowgate.experiments.ExperimentRouter` running
an A/B test on top of one. Concurrent requests are micro-batched
(:mod:`~knowgate.integrations.serving.batcher`): those that arrive within a few milliseconds
share one ``route_batch`` call in one worker thread, each with its own threshold, unit, request
id and deadline.

Endpoints (details and examples: docs/serving.md):

- ``POST /route``, ``POST /route_batch``: knowgate's JSON API (the trace of ``knowgate ask
  --json``, plus the server's queue and batch times under ``serving``).
- ``POST /feedback``: the outcome of a logged request, for A/B reports.
- ``POST /v1/chat/completions`` (streaming too) and ``GET /v1/models``: the OpenAI-compatible
  API (:mod:`~knowgate.integrations.serving.openai_api`).
- ``GET /health`` (liveness), ``GET /health/ready`` (readiness), ``GET /metrics`` (Prometheus).

Every error has one shape, OpenAI's error object (:mod:`~knowgate.integrations.serving.errors`).
"""

from __future__ import annotations

from knowgate.errors import MissingPackageError

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed by make
    raise MissingPackageError(
        f"serving needs the serve extra ({exc.name} is missing): pip install 'knowgate[serve]'"
    ) from exc

from knowgate.integrations.serving.app import create_app
from knowgate.integrations.serving.batcher import MicroBatcher
from knowgate.integrations.serving.errors import ErrorResponse, ServingError
from knowgate.integrations.serving.metrics import ServingMetrics
from knowgate.integrations.serving.settings import MAX_BATCH, ServingConfig

__all__ = [
    "MAX_BATCH",
    "ErrorResponse",
    "MicroBatcher",
    "ServingConfig",
    "ServingError",
    "ServingMetrics",
    "create_app",
]
