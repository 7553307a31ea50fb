"""The FastAPI app: knowgate's own JSON API, the OpenAI-compatible API, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from knowgate._version import __version__
from knowgate.errors import ExperimentError, KnowgateError
from knowgate.experiments import DecisionLog, ExperimentRouter, Outcome
from knowgate.integrations.serving.batcher import Job, MicroBatcher
from knowgate.integrations.serving.errors import (
    ErrorResponse,
    ServingError,
    error_body,
    install_error_handlers,
    knowgate_status,
    snake_case,
)
from knowgate.integrations.serving.limits import BodyLimitMiddleware
from knowgate.integrations.serving.metrics import MetricsMiddleware, ServingMetrics
from knowgate.integrations.serving.openai_api import (
    MODEL_ALIAS,
    ChatCompletionRequest,
    chunk,
    completion,
    extension,
    model_card,
    resolve_model,
    trace_headers,
)
from knowgate.integrations.serving.settings import MAX_BATCH, ServingConfig
from knowgate.routing import QueryRouter, RoutedAnswer

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Malformed JSON; on /v1 also an invalid or unsupported request"),
        (413, "Request body too large"),
        (422, "Invalid request (knowgate's endpoints)"),
        (429, "Queue full; retry after Retry-After seconds"),
        (503, "Shutting down"),
        (504, "Timed out"),
    )
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteRequest(_Body):
    """One question."""

    query: str
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    unit_id: str | int | None = None
    passage_text: bool = False
    timeout_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


class RouteBatchRequest(_Body):
    """Several questions, answered in one batched pass."""

    queries: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    unit_ids: list[str | int | None] | None = None
    passage_text: bool = False
    timeout_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


class FeedbackRequest(_Body):
    """The outcome of a logged request."""

    request_id: str = Field(..., min_length=1)
    correct: bool | None = None
    score: float | None = None
    label_source: str = "feedback"


def new_request_id() -> str:
    """A fresh request id (the server assigns them; the decision log keys on them)."""
    return uuid.uuid4().hex


def create_app(
    router: QueryRouter,
    *,
    decision_log: DecisionLog | None = None,
    config: ServingConfig | None = None,
    close_on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The HTTP app serving ``router`` (a Router, or an ExperimentRouter on top of one).

    Args:
        router: answers every routing endpoint, through the micro-batcher.
        decision_log: where ``/feedback`` records outcomes; ``None`` uses the decision log of an
            ExperimentRouter (a plain Router has none, and ``/feedback`` answers 503).
        config: micro-batching, queue and limits (default :class:`ServingConfig`).
        close_on_shutdown: called at shutdown after the last request was answered (the CLI
            closes the decision log here, so it is flushed before the process exits).
    """
    settings = config or ServingConfig()
    if decision_log is None and isinstance(router, ExperimentRouter):
        decision_log = router.decision_log
    metrics = ServingMetrics()
    batcher = MicroBatcher(router, settings, metrics)
    described = {"experiment": None, **router.describe()}
    model_id = str(described["model"])
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; finish anything
            # still queued, then let the owner flush the decision log.
            await batcher.stop()
            if close_on_shutdown is not None:
                close_on_shutdown()

    app = FastAPI(
        title="knowgate",
        version=__version__,
        description="Retrieve only when the model does not know. Errors: docs/serving.md.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app, metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        on_refuse=metrics.errors.labels("body_too_large").inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too

    async def answers(request: Request, job: Job) -> list[RoutedAnswer]:
        """The job's answers; if the client leaves first, drop the job if it is still queued."""
        result = asyncio.ensure_future(batcher.result(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if result.done():
            return result.result()
        result.cancel()
        batcher.abandon(job)
        metrics.disconnects.inc()
        raise ServingError(499, "the client closed the request", code="client_disconnected")

    # ------------------------------------------------------------------------------ health
    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the process serves HTTP; what it serves."""
        return {"status": "ok", **described, "decision_log": decision_log is not None}

    @app.get("/health/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> Any:
        """Readiness: the batcher accepts requests (not starting, not shutting down)."""
        if not batcher.stopping:
            await batcher.start()
        if not batcher.ready:
            code = "shutting_down" if batcher.stopping else "not_ready"
            raise ServingError(503, f"not ready ({code.replace('_', ' ')})", code=code)
        return {
            "status": "ready",
            "queue": batcher.queue_depth,
            "max_queue": settings.max_queue,
            "running_batch": batcher.running_batch,
            "serving": settings.model_dump(),
        }

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ----------------------------------------------------------------------- knowgate's API
    @app.post("/route")
    async def route(body: RouteRequest, request: Request) -> JSONResponse:
        """One question -> its trace (``knowgate ask --json``) plus the server's timings."""
        job = batcher.submit(
            [body.query],
            request_ids=[new_request_id()],
            thresholds=[body.threshold],
            unit_ids=[body.unit_id],
            timeout_s=body.timeout_s,
        )
        (routed,) = await answers(request, job)
        serving = job.serving()
        trace = {**routed.to_dict(passage_text=body.passage_text), "serving": serving}
        return JSONResponse(trace, headers=trace_headers(routed, serving))

    @app.post("/route_batch")
    async def route_batch(body: RouteBatchRequest, request: Request) -> JSONResponse:
        """Several questions -> their traces, in order (one queue entry, batched with others)."""
        n = len(body.queries)
        if body.unit_ids is not None and len(body.unit_ids) != n:
            raise ServingError(
                422,
                f"unit_ids has {len(body.unit_ids)} entries for {n} queries",
                code="invalid_request",
                param="unit_ids",
            )
        job = batcher.submit(
            body.queries,
            request_ids=[new_request_id() for _ in range(n)],
            thresholds=[body.threshold] * n,
            unit_ids=body.unit_ids,
            timeout_s=body.timeout_s,
        )
        routed = await answers(request, job)
        serving = job.serving()
        return JSONResponse(
            [{**r.to_dict(passage_text=body.passage_text), "serving": serving} for r in routed]
        )

    @app.post("/feedback")
    def feedback(body: FeedbackRequest) -> dict[str, int]:
        """The outcome of a logged request, for A/B reports."""
        if decision_log is None:
            raise ServingError(
                503,
                "this server logs no decisions (no experiment decision log)",
                code="no_decision_log",
            )
        try:
            decision_log.request(body.request_id)
        except ExperimentError as exc:
            raise ServingError(404, str(exc), code="unknown_request", param="request_id") from exc
        outcome = Outcome(body.request_id, body.correct, body.score, body.label_source)
        try:
            return {"recorded": decision_log.record_outcomes([outcome])}
        except ExperimentError as exc:  # an invalid outcome (e.g. a NaN score)
            raise ServingError(422, str(exc), code="invalid_outcome") from exc

    # ------------------------------------------------------------------------- OpenAI's API
    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        """The served model, and the alias every server answers to."""
        return {
            "object": "list",
            "data": [model_card(model_id, started), model_card(MODEL_ALIAS, started)],
        }

    @app.get("/v1/models/{model}")
    def get_model(model: str) -> dict[str, Any]:
        """One model (the served model or the alias)."""
        resolve_model(model, model_id)
        return model_card(model, started)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Gated RAG as an OpenAI chat model (see docs/serving.md for the rules)."""
        name = resolve_model(body.model, model_id)
        body.check_supported()
        query, notes = body.query()
        notes += [f"{p} has no effect: knowgate decodes greedily" for p in body.no_effect()]
        options = body.knowgate
        unit_id = options.unit_id if options.unit_id is not None else body.user
        created = int(time.time())
        request_id = new_request_id()
        if not body.stream:
            job = batcher.submit(
                [query],
                request_ids=[request_id],
                thresholds=[options.threshold],
                unit_ids=[unit_id],
                timeout_s=options.timeout_s,
            )
            (routed,) = await answers(request, job)
            serving = job.serving()
            knowgate = extension(routed, serving, notes, passage_text=options.passage_text)
            return JSONResponse(
                completion(routed, model=name, created=created, knowgate=knowgate),
                headers=trace_headers(routed, serving),
            )

        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str] = asyncio.Queue()

        def sink(text: str) -> None:  # called in the model's thread
            loop.call_soon_threadsafe(deltas.put_nowait, text)

        # Queued before the response starts: a full queue is still a plain 429.
        job = batcher.submit(
            [query],
            request_ids=[request_id],
            thresholds=[options.threshold],
            unit_ids=[unit_id],
            streams=[sink],
            timeout_s=options.timeout_s,
        )

        def event(delta: dict[str, Any], **kwargs: Any) -> bytes:
            data = chunk(request_id, model=name, created=created, delta=delta, **kwargs)
            return format_sse_event(data_str=data)

        async def events() -> AsyncIterator[bytes]:
            result = asyncio.ensure_future(batcher.result(job))
            sent = ""
            try:
                yield event({"role": "assistant", "content": ""})
                while not result.done():
                    getter = asyncio.ensure_future(deltas.get())
                    await asyncio.wait({getter, result}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        sent += getter.result()
                        yield event({"content": getter.result()})
                    else:
                        getter.cancel()
                while not deltas.empty():
                    text = deltas.get_nowait()
                    sent += text
                    yield event({"content": text})
                try:
                    (routed,) = result.result()
                except ServingError as exc:
                    yield _error_event(metrics, exc.status, exc.message, exc.code, exc.param)
                    return
                except KnowgateError as exc:
                    code = snake_case(type(exc).__name__)
                    yield _error_event(metrics, knowgate_status(exc), str(exc), code)
                    return
                except Exception as exc:  # a bug: the stream still ends with an error event
                    log.exception("request %s failed", request_id)
                    message = f"internal server error ({type(exc).__name__})"
                    yield _error_event(metrics, 500, message, "internal_error")
                    return
                knowgate = extension(
                    routed, job.serving(), notes, passage_text=options.passage_text
                )
                if routed.answer.startswith(sent):
                    if len(routed.answer) > len(sent):  # text that was not decoded token-wise
                        yield event({"content": routed.answer[len(sent) :]})
                else:  # AnswerStream prevents it; never let a wrong answer pass silently
                    log.error("request %s: streamed text is not a prefix of its answer", request_id)
                    notes.append("the streamed text differs from the answer: see knowgate.answer")
                    knowgate["answer"] = routed.answer
                yield event({}, finish_reason="stop", knowgate=knowgate)
                yield format_sse_event(data_str="[DONE]")
            finally:
                if not result.done():  # the client left mid-stream; its batch runs on
                    result.cancel()
                    batcher.abandon(job)
                    metrics.disconnects.inc()

        return EventSourceResponse(
            events(),
            headers={"X-Request-ID": request_id, "Cache-Control": "no-cache"},
        )

    return app


def _error_event(
    metrics: ServingMetrics, status: int, message: str, code: str, param: str | None = None
) -> bytes:
    """An error inside a stream that has started (its HTTP status was already 200)."""
    metrics.errors.labels(code).inc()
    return format_sse_event(data_str=json.dumps(error_body(status, message, code, param)))


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
