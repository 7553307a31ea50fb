"""How the HTTP server batches, queues and limits requests (the ``knowgate serve`` options)."""

from __future__ import annotations

from pydantic import Field

from knowgate.schema import StrictModel

MAX_BATCH = 256
"""Queries per ``/route_batch`` request."""


class ServingConfig(StrictModel):
    """Micro-batching, queue and limits of one server.

    Attributes:
        max_batch_size: most queries routed together in one ``route_batch`` call; 1 routes
            every request alone (no micro-batching). The router still splits a batch into
            chunks of its ``model.generation.batch_size``.
        max_wait_ms: how long the first request of a batch may wait for others to join (from
            its arrival); a batch also starts as soon as it is full. Requests that arrive while
            a batch runs join the next one without waiting further.
        max_queue: requests waiting for a batch (each ``/route_batch`` request counts once);
            one more is refused with 429 and a ``Retry-After`` estimate.
        max_body_bytes: larger request bodies are refused with 413.
        request_timeout_s: longest a request may take from arrival to answer; a request may ask
            for less (``timeout_s``), never for more. Past it the client gets 504.
    """

    max_batch_size: int = Field(default=8, ge=1, le=MAX_BATCH)
    max_wait_ms: float = Field(default=10.0, ge=0.0, le=10_000.0, allow_inf_nan=False)
    max_queue: int = Field(default=64, ge=1, le=100_000)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=120.0, gt=0.0, le=86_400.0, allow_inf_nan=False)
