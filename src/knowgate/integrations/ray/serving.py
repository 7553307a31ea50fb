"""The knowgate HTTP app as a Ray Serve deployment: replicas of one router behind one endpoint.

Each replica builds its own router (model, policy, knowledge base) from a picklable factory and
serves the *same* FastAPI app as ``knowgate serve`` (:func:`~knowgate.integrations.serving.
create_app`) through Serve's ingress, so every endpoint, error shape and metric is unchanged.
Serve's proxy spreads HTTP requests over the replicas, and the replica count is fixed or
autoscaled from :class:`RayServeConfig`.

Batching happens where the model is: inside a replica, concurrent HTTP requests share one
``route_batch`` call through the app's micro-batcher (which keeps each request's threshold,
deadline, stream and 429 back-pressure). Callers inside the cluster (another deployment, a Ray
job) use the deployment handle's :meth:`route` method instead, which Serve's own request
batching (``@serve.batch``) gathers into ``route_batch`` calls with per-request thresholds and
unit ids. Both paths share the replica's router, whose model lock serialises forward passes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from knowgate.integrations.ray.runtime import require_ray
from knowgate.integrations.serving import ServingConfig, create_app
from knowgate.routing import QueryRouter
from knowgate.schema import StrictModel

log = logging.getLogger(__name__)

RouterFactory = Callable[[], QueryRouter]
"""Builds a replica's router; must be picklable (a module-level function or a partial of one)."""


class AutoscalingConfig(StrictModel):
    """Serve's request-based autoscaling (a subset of ``autoscaling_config``).

    Attributes:
        min_replicas: replicas kept when idle.
        max_replicas: the most replicas.
        target_ongoing_requests: requests in flight per replica that Serve aims for; a replica
            batches up to ``max_batch_size`` queries, so about that many keeps it busy.
    """

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self


class RayServeConfig(StrictModel):
    """A knowgate deployment on Ray Serve (the YAML of ``knowgate serve --ray --ray-config``).

    Attributes:
        name: the Serve application and deployment name.
        num_replicas: a fixed replica count; ignored when ``autoscaling`` is set.
        autoscaling: request-based autoscaling instead of a fixed count.
        num_cpus: CPUs Ray reserves per replica (a replica runs one model).
        max_ongoing_requests: requests a replica accepts at once; more wait in Serve's proxy.
            Keep it at or above the micro-batcher's ``max_batch_size`` or batches stay small.
        handle_batch_size: most handle calls (:meth:`KnowgateDeployment.route`) per
            ``route_batch``.
        handle_batch_wait_s: how long the first handle call waits for others.
        route_prefix: where the app is mounted.
    """

    name: str = Field(default="knowgate", min_length=1)
    num_replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(default=1.0, gt=0.0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    handle_batch_size: int = Field(default=8, ge=1)
    handle_batch_wait_s: float = Field(default=0.01, ge=0.0)
    route_prefix: str = "/"

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment(...).options``."""
        options: dict[str, Any] = {
            "name": self.name,
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


require_ray("serve")
from ray import serve  # noqa: E402  (after the check, so a missing Ray names the extra)


class KnowgateDeployment:
    """One replica: a router and the knowgate app around it (deployed by :func:`build_app`)."""

    def __init__(
        self, router_factory: RouterFactory, serving: dict[str, Any], ray_config: dict[str, Any]
    ) -> None:
        self.router = router_factory()
        self.serving = ServingConfig.model_validate(serving)
        config = RayServeConfig.model_validate(ray_config)
        # One replica per process, so setting the batch queue's limits here is per replica.
        batched: Any = self._route_batched  # @serve.batch adds the setters
        batched.set_max_batch_size(config.handle_batch_size)
        batched.set_batch_wait_timeout_s(config.handle_batch_wait_s)
        self.replica = uuid.uuid4().hex[:8]
        log.info("knowgate replica %s ready (%s)", self.replica, self.router.describe())

    def __serve_build_asgi_app__(self) -> Any:
        """The FastAPI app of ``knowgate serve`` around this replica's router."""
        close = getattr(self.router, "close", None)
        return create_app(self.router, config=self.serving, close_on_shutdown=close)

    async def route(self, request: dict[str, Any]) -> dict[str, Any]:
        """Route one query from a deployment handle: ``{"query", "threshold"?, "unit_id"?}``.

        Returns the trace of ``/route`` (``RoutedAnswer.to_dict()``) plus ``serving`` with
        the replica id and the size of the Serve batch it was routed in.
        """
        result: dict[str, Any] = await self._route_batched(request)
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _route_batched(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Serve's batching: concurrent handle calls become one ``route_batch`` call."""
        queries = [str(r["query"]) for r in requests]
        routed = await asyncio.to_thread(
            self.router.route_batch,
            queries,
            thresholds=[r.get("threshold") for r in requests],
            unit_ids=[r.get("unit_id") for r in requests],
            request_ids=[uuid.uuid4().hex for _ in requests],
        )
        serving = {"replica": self.replica, "batch_size": len(requests)}
        return [{**r.to_dict(), "serving": serving} for r in routed]


def build_app(
    router_factory: RouterFactory,
    serving: ServingConfig | None = None,
    config: RayServeConfig | None = None,
) -> Any:
    """A Serve application (``serve.run`` it) of the knowgate app over ``router_factory``.

    Args:
        router_factory: builds each replica's router (e.g. ``functools.partial(
            router_from_config, router_config)``); it runs in the replica, so the model is
            loaded there, never pickled.
        serving: the micro-batcher and limits of each replica's app.
        config: replicas, autoscaling, CPUs and handle batching.
    """
    serving = serving or ServingConfig()
    config = config or RayServeConfig()
    make_deployment: Any = serve.deployment  # its overloads do not model a class argument
    deployment = make_deployment(serve.ingress()(KnowgateDeployment)).options(
        **config.deployment_options()
    )
    return deployment.bind(
        router_factory, serving.model_dump(mode="json"), config.model_dump(mode="json")
    )


def run(
    router_factory: RouterFactory,
    serving: ServingConfig | None = None,
    config: RayServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> Any:
    """Start Serve's HTTP proxy on ``host:port``, deploy the app and wait until it is ready.

    Returns the application's deployment handle. The caller owns the Ray connection
    (:func:`~knowgate.integrations.ray.ray_runtime`) and stops the app with
    ``serve.shutdown()``.
    """
    config = config or RayServeConfig()
    serve.start(http_options={"host": host, "port": port})
    return serve.run(
        build_app(router_factory, serving, config),
        name=config.name,
        route_prefix=config.route_prefix,
        blocking=False,
    )
