"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

A registry per app (not prometheus-client's global one) keeps two apps in one process - tests,
or two routers mounted side by side - from sharing or clashing over series. The names:

- ``knowgate_http_requests_total{endpoint, method, status}`` and
  ``knowgate_http_request_duration_seconds{endpoint}``: every HTTP request, by route template.
- ``knowgate_routed_requests_total{decision}``: routed queries, ``decision`` = ``retrieve`` or
  ``closed_book``; the retrieval rate is
  ``rate(knowgate_routed_requests_total{decision="retrieve"}[5m])
  / sum(rate(knowgate_routed_requests_total[5m]))``.
- ``knowgate_retrieval_fallbacks_total``: retrieval wanted but the answer fell back to
  closed-book (no retriever, retriever failed or found nothing).
- ``knowgate_p_known``: calibrated p_known of routed queries (policies without one: not
  observed).
- ``knowgate_stage_duration_seconds{stage}``: ``queue`` (wait for a batch), ``batch`` (one
  ``route_batch`` call), and the router's stages per query (``prefill``, ``signals``,
  ``decode``, ``policy``, ``retrieve``, ``answer_with_passages``, ``generate``, ``total``: a
  query's share of each batched stage, as in its trace).
- ``knowgate_batch_size``: queries per ``route_batch`` call.
- ``knowgate_queue_depth``: requests waiting for a batch.
- ``knowgate_errors_total{code}``: error responses by code (see
  :mod:`knowgate.integrations.serving.errors`); ``knowgate_client_disconnects_total``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from knowgate.routing import RoutedAnswer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
P_KNOWN_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class ServingMetrics:
    """The server's Prometheus series (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create every series in ``registry`` (default: a new one)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "knowgate_http_requests",
            "HTTP requests by route template, method and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "knowgate_http_request_duration_seconds",
            "Server-side wall time of HTTP requests (streams: until the last event).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.routed = Counter(
            "knowgate_routed_requests",
            "Routed queries by gate decision (retrieve or closed_book).",
            ["decision"],
            registry=r,
        )
        self.fallbacks = Counter(
            "knowgate_retrieval_fallbacks",
            "Queries that wanted retrieval but were answered closed-book.",
            registry=r,
        )
        self.p_known = Histogram(
            "knowgate_p_known",
            "Calibrated p_known of routed queries.",
            buckets=P_KNOWN_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "knowgate_stage_duration_seconds",
            "Latency per stage: queue, batch, and the router's per-query stages.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "knowgate_batch_size",
            "Queries per route_batch call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "knowgate_queue_depth", "Requests waiting for a batch.", registry=r
        )
        self.errors = Counter("knowgate_errors", "Error responses by code.", ["code"], registry=r)
        self.disconnects = Counter(
            "knowgate_client_disconnects",
            "Clients that left before their answer (their batch ran on).",
            registry=r,
        )

    def observe_routed(self, routed: Sequence[RoutedAnswer]) -> None:
        """Count the decisions, p_known and stage times of routed queries."""
        for r in routed:
            self.routed.labels("retrieve" if r.decision.retrieve else "closed_book").inc()
            if r.retrieval_error is not None:
                self.fallbacks.inc()
            if r.decision.p_known is not None:
                self.p_known.observe(r.decision.p_known)
            for stage, ms in r.timings_ms.items():
                self.stage_seconds.labels(stage).observe(ms / 1000.0)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One ``route_batch`` call of ``size`` queries."""
        self.batch_size.observe(size)
        self.stage_seconds.labels("batch").observe(seconds)

    def observe_queue(self, seconds: float) -> None:
        """One request's wait for its batch."""
        self.stage_seconds.labels("queue").observe(seconds)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by route template, method and status.

    Pure ASGI (not ``BaseHTTPMiddleware``), so streamed responses and client disconnects pass
    through untouched; the endpoint label is the matched route's path template, so series do
    not multiply with ids in URLs.
    """

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        """Wrap ``app``."""
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the request and record its status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(endpoint, scope["method"], str(status["code"])).inc()
            self.metrics.http_seconds.labels(endpoint).observe(time.perf_counter() - start)
