"""Dynamic micro-batching: concurrent requests share one ``route_batch`` call.

The model is CPU/GPU bound and serialises its forward passes behind a lock, so requests routed
one by one queue for it at the batch-1 rate, while ``route_batch`` prefills and decodes many
queries together at several times that rate. The :class:`MicroBatcher` collects the requests
that arrive within ``max_wait_ms`` of the first (or until ``max_batch_size`` queries) and routes
them together in one worker thread, so the event loop stays free to accept, parse and stream.

Each request keeps its own threshold, unit id, request id, stream and deadline inside the batch:
they travel as the per-query arguments of :meth:`~knowgate.routing.QueryRouter.route_batch`, so
the batcher works with any router behind the protocol (a plain ``Router`` or an
``ExperimentRouter``, which assigns and logs each request as usual).

Lifecycle of a request: :meth:`MicroBatcher.submit` queues it at once or refuses it (429 when
the queue is full, 503 when the server is stopping); :meth:`MicroBatcher.result` waits for its
answer until its deadline (504 after). A request whose client leaves, or whose deadline passes,
while it still waits is taken out of the queue and never routed; once its batch has started it
runs to the end with the others (the model cannot drop one row of a batch), so the rest of the
batch is unaffected and an ExperimentRouter still logs it.

If a batch fails as a whole (one request with a bad query or a refused threshold makes
``route_batch`` raise), its requests are routed again one by one, so the error reaches only the
request that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from knowgate.integrations.serving.errors import ServingError
from knowgate.integrations.serving.metrics import ServingMetrics
from knowgate.integrations.serving.settings import ServingConfig
from knowgate.routing import QueryRouter, RoutedAnswer, TextSink

log = logging.getLogger(__name__)


class _Sink:
    """A request's stream, remembering whether it has received text (see ``_route_alone``)."""

    def __init__(self, sink: TextSink) -> None:
        self.sink = sink
        self.used = False

    def __call__(self, text: str) -> None:
        self.used = True
        self.sink(text)


@dataclass(eq=False)
class Job:
    """One HTTP request's queries waiting for, or riding in, a batch.

    Attributes:
        queries: the request's queries (one, or a ``/route_batch`` request's list).
        thresholds: per-query threshold overrides.
        unit_ids: per-query units.
        request_ids: per-query request ids (assigned by the server; logged as such).
        streams: per-query text sinks for streamed answers.
        deadline: event-loop time after which the client gets 504.
        future: the routed answers, or the error.
        enqueued: ``time.perf_counter()`` at arrival.
        started: when its batch started (``None`` while queued).
        batch_ms: wall time of its batch's ``route_batch`` call.
        batch_size: queries in its batch.
    """

    queries: list[str]
    thresholds: list[float | None]
    unit_ids: list[str | int | None]
    request_ids: list[str]
    streams: list[_Sink | None]
    deadline: float
    future: asyncio.Future[list[RoutedAnswer]]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    batch_ms: float | None = None
    batch_size: int | None = None

    @property
    def size(self) -> int:
        """Queries in this request."""
        return len(self.queries)

    def serving(self) -> dict[str, Any]:
        """What the server added to the router's timings: queue wait, batch time and size."""
        queue = None if self.started is None else (self.started - self.enqueued) * 1000.0
        return {
            "queue_ms": None if queue is None else round(queue, 2),
            "batch_ms": None if self.batch_ms is None else round(self.batch_ms, 2),
            "batch_size": self.batch_size,
        }


class MicroBatcher:
    """Routes concurrent requests together, in one worker thread.

    Args:
        router: any :class:`~knowgate.routing.QueryRouter`.
        config: batch size, wait, queue length and timeout.
        metrics: where batches, queue waits and routed queries are counted.
    """

    def __init__(
        self,
        router: QueryRouter,
        config: ServingConfig | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        """Prepare; the worker starts with :meth:`start` (or the first request)."""
        self.router = router
        self.config = config or ServingConfig()
        self.metrics = metrics or ServingMetrics()
        self._pending: deque[Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._batch_seconds: float | None = None
        self.running_batch = 0

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def ready(self) -> bool:
        """Whether requests are accepted (started and not stopping)."""
        return self._worker is not None and not self._worker.done() and not self._stopping

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the worker on the running event loop (idempotent)."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None:
            if self._loop is not loop:
                raise RuntimeError(
                    "the batcher runs on the event loop that started it; use one loop per app "
                    "(with Starlette's TestClient: `with TestClient(app) as client`)"
                )
            return
        if self._stopping:
            raise ServingError(503, "the server is shutting down", code="shutting_down")
        self._loop = loop
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowgate-model")
        self._worker = loop.create_task(self._work(), name="knowgate-batcher")

    async def stop(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop the worker."""
        self._stopping = True
        if self._worker is None:
            return
        assert self._arrived is not None
        self._arrived.set()
        await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------ requests
    def submit(
        self,
        queries: Sequence[str],
        *,
        request_ids: Sequence[str],
        thresholds: Sequence[float | None] | None = None,
        unit_ids: Sequence[str | int | None] | None = None,
        streams: Sequence[TextSink | None] | None = None,
        timeout_s: float | None = None,
    ) -> Job:
        """Queue one request's queries, or refuse it at once.

        Args:
            queries: the request's queries.
            request_ids: one id per query.
            thresholds: per-query threshold overrides (default none).
            unit_ids: per-query units (default none).
            streams: per-query sinks for streamed answer text (default none).
            timeout_s: this request's limit (at most the server's ``request_timeout_s``).

        Raises:
            ServingError: 429 (queue full, with ``Retry-After``) or 503 (shutting down).
        """
        self._ensure_started()
        if self._stopping:
            raise ServingError(503, "the server is shutting down", code="shutting_down")
        if len(self._pending) >= self.config.max_queue:
            retry = self.retry_after_s()
            raise ServingError(
                429,
                f"the request queue is full ({self.config.max_queue} requests waiting); retry "
                f"in about {retry} s",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        n = len(queries)
        limit = self.config.request_timeout_s
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        assert self._loop is not None and self._arrived is not None
        job = Job(
            queries=list(queries),
            thresholds=list(thresholds) if thresholds is not None else [None] * n,
            unit_ids=list(unit_ids) if unit_ids is not None else [None] * n,
            request_ids=list(request_ids),
            streams=[None if s is None else _Sink(s) for s in streams or [None] * n],
            deadline=self._loop.time() + timeout,
            future=self._loop.create_future(),
        )
        self._pending.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        self._arrived.set()
        return job

    async def result(self, job: Job) -> list[RoutedAnswer]:
        """The answers of ``job``, once its batch has run.

        Raises:
            ServingError: 504 when its deadline passes first.
            KnowgateError: the router refused the request (bad query, refused threshold, ...).
        """
        try:
            async with asyncio.timeout_at(job.deadline):
                return await asyncio.shield(job.future)
        except TimeoutError:
            self.abandon(job)
            waited = time.perf_counter() - job.enqueued
            where = "in the queue" if job.started is None else "while its batch ran"
            raise ServingError(
                504,
                f"request timed out after {waited:.1f} s ({where}); the server's limit is "
                f"{self.config.request_timeout_s:g} s",
                code="timeout",
            ) from None
        except asyncio.CancelledError:
            self.abandon(job)
            raise

    async def route(self, queries: Sequence[str], **kwargs: Any) -> list[RoutedAnswer]:
        """:meth:`submit` and :meth:`result` in one call."""
        return await self.result(self.submit(queries, **kwargs))

    def abandon(self, job: Job) -> None:
        """Nobody waits for ``job`` any more: drop it if it is still queued."""
        try:
            self._pending.remove(job)
        except ValueError:
            return  # already in a batch (it runs to the end) or done
        self.metrics.queue_depth.set(len(self._pending))
        if not job.future.done():
            job.future.cancel()

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely moved on by one full batch (``Retry-After``)."""
        per_batch = self._batch_seconds or 1.0
        queued = sum(j.size for j in self._pending)
        return max(1, math.ceil((queued / self.config.max_batch_size + 1) * per_batch))

    # -------------------------------------------------------------------------------- worker
    async def _work(self) -> None:
        assert self._loop is not None
        while True:
            batch = await self._collect()
            if batch is None:
                return
            await self._run(batch)

    async def _collect(self) -> list[Job] | None:
        """The next batch: wait for a request, then for others until full or ``max_wait``."""
        assert self._arrived is not None and self._loop is not None
        while not self._pending:
            if self._stopping:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        wait_s = self.config.max_wait_ms / 1000.0
        while not self._stopping:
            queued = sum(j.size for j in self._pending)
            remaining = self._pending[0].enqueued + wait_s - time.perf_counter()
            if queued >= self.config.max_batch_size or remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                pass
            if not self._pending:  # the waiting requests were abandoned
                return [] if not self._stopping else None
        batch: list[Job] = []
        size = 0
        now = self._loop.time()
        while self._pending:
            job = self._pending[0]
            if batch and size + job.size > self.config.max_batch_size:
                break
            self._pending.popleft()
            if now >= job.deadline or job.future.done():
                continue  # its client has already been told (timeout) or has left
            batch.append(job)
            size += job.size
        self.metrics.queue_depth.set(len(self._pending))
        return batch

    async def _run(self, batch: list[Job]) -> None:
        if not batch:
            return
        assert self._loop is not None and self._executor is not None
        started = time.perf_counter()
        size = sum(j.size for j in batch)
        for job in batch:
            job.started = started
            job.batch_size = size
            self.metrics.observe_queue(started - job.enqueued)
        self.running_batch = size
        try:
            outcomes = await self._loop.run_in_executor(self._executor, self._route_jobs, batch)
        except BaseException as exc:  # a bug in the worker must not leave clients hanging
            log.exception("batch of %d queries failed", size)
            outcomes = [exc] * len(batch)
        finally:
            self.running_batch = 0
        seconds = time.perf_counter() - started
        self._batch_seconds = (
            seconds if self._batch_seconds is None else 0.8 * self._batch_seconds + 0.2 * seconds
        )
        self.metrics.observe_batch(size, seconds)
        for job, outcome in zip(batch, outcomes, strict=True):
            job.batch_ms = seconds * 1000.0
            if isinstance(outcome, BaseException):
                self._settle(job, error=outcome)
            else:
                self.metrics.observe_routed(outcome)
                self._settle(job, answers=outcome)

    @staticmethod
    def _settle(
        job: Job,
        *,
        answers: list[RoutedAnswer] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
            # Nobody may be waiting any more (timed out, disconnected): mark it retrieved.
            job.future.add_done_callback(lambda f: f.exception())
        else:
            job.future.set_result(answers or [])

    # -------------------------------------------------------------------- in the model thread
    def _route_jobs(self, batch: list[Job]) -> list[list[RoutedAnswer] | BaseException]:
        try:
            routed = self._route(batch, use_streams=True)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            log.info(
                "a batch of %d requests failed (%s: %s); routing them one by one",
                len(batch),
                type(exc).__name__,
                exc,
            )
            return [self._route_alone(job) for job in batch]
        out: list[list[RoutedAnswer] | BaseException] = []
        start = 0
        for job in batch:
            out.append(routed[start : start + job.size])
            start += job.size
        return out

    def _route_alone(self, job: Job) -> list[RoutedAnswer] | BaseException:
        try:
            return self._route([job], use_streams=False)
        except Exception as exc:
            return exc

    def _route(self, batch: list[Job], *, use_streams: bool) -> list[RoutedAnswer]:
        thresholds = [t for j in batch for t in j.thresholds]
        streams: list[TextSink | None] = [
            # Retried alone, a stream that already got text from the failed batch gets the
            # rest with the answer instead (text already sent cannot be taken back).
            s if s is not None and (use_streams or not s.used) else None
            for j in batch
            for s in j.streams
        ]
        return self.router.route_batch(
            [q for j in batch for q in j.queries],
            unit_ids=[u for j in batch for u in j.unit_ids],
            thresholds=None if all(t is None for t in thresholds) else thresholds,
            request_ids=[r for j in batch for r in j.request_ids],
            streams=None if all(s is None for s in streams) else streams,
        )
