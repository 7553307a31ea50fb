"""An HTTP front for a router (FastAPI; ``pip install knowgate[serve]``).

Services that are not written in Python - or that should not load a model per worker - call one
knowgate process over HTTP. The app holds one :class:`~knowgate.routing.QueryRouter`: a
:class:`~knowgate.routing.Router`, or an :class:`~knowgate.experiments.ExperimentRouter` running
an A/B test on top of one. FastAPI runs the synchronous endpoints in its thread pool and the
model serialises its forward passes behind its own lock, so concurrent requests are safe (they
queue for the model; batch them with ``/route_batch`` for throughput).

Endpoints:

- ``GET /health``: model, policy, gate mode, whether a knowledge base, an experiment and a
  decision log are set.
- ``POST /route``: ``{"query": ..., "threshold": null, "unit_id": null, "passage_text": false}``
  -> the :class:`~knowgate.routing.RoutedAnswer` as ``knowgate ask --json`` prints it.
- ``POST /route_batch``: ``{"queries": [...], "threshold": null, "unit_ids": null}`` -> a list.
- ``POST /feedback``: ``{"request_id": ..., "correct": true, "score": null}``: the outcome of a
  logged request, for A/B reports (needs an ExperimentRouter with a decision log).

Errors are JSON ``{"error": message, "type": error class}``: 422 for a bad request (empty or
oversized query, a threshold out of range, a malformed body), 409 for an experiment conflict,
404 for feedback on an unknown request, 503 when the server has no decision log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from knowgate._version import __version__
from knowgate.errors import (
    ExperimentError,
    InputError,
    KnowgateError,
    MissingPackageError,
    PolicyError,
)
from knowgate.experiments import DecisionLog, ExperimentRouter, Outcome
from knowgate.routing import QueryRouter

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_BATCH = 256
"""Queries per ``/route_batch`` request (one request holds the model for the whole batch)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteRequest(_Body):
    """One question."""

    query: str
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    unit_id: str | int | None = None
    passage_text: bool = False


class RouteBatchRequest(_Body):
    """Several questions, answered in one batched pass."""

    queries: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    unit_ids: list[str | int | None] | None = None
    passage_text: bool = False


class FeedbackRequest(_Body):
    """The outcome of a logged request."""

    request_id: str = Field(..., min_length=1)
    correct: bool | None = None
    score: float | None = None
    label_source: str = "feedback"


def _status(exc: KnowgateError) -> int:
    if isinstance(exc, ExperimentError):
        return 409
    if isinstance(exc, InputError | PolicyError | ValueError):
        return 422
    return 500


def create_app(router: QueryRouter, *, decision_log: DecisionLog | None = None) -> FastAPI:
    """The HTTP app serving ``router`` (a Router, or an ExperimentRouter on top of one).

    Args:
        router: answers ``/route`` and ``/route_batch``.
        decision_log: where ``/feedback`` records outcomes; ``None`` uses the decision log of an
            ExperimentRouter (a plain Router has none, and ``/feedback`` answers 503).

    Raises:
        MissingPackageError: FastAPI is not installed.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:  # pragma: no cover - the extra is installed by make
        raise MissingPackageError("serving needs FastAPI: pip install 'knowgate[serve]'") from exc
    if decision_log is None and isinstance(router, ExperimentRouter):
        decision_log = router.decision_log

    app = FastAPI(
        title="knowgate",
        version=__version__,
        description="Retrieve only when the model does not know.",
    )

    @app.exception_handler(KnowgateError)
    async def _knowgate_error(request: Request, exc: KnowgateError) -> JSONResponse:
        return JSONResponse(
            status_code=_status(exc), content={"error": str(exc), "type": type(exc).__name__}
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        described = {"experiment": None, **router.describe()}
        return {"status": "ok", **described, "decision_log": decision_log is not None}

    @app.post("/route")
    def route(body: RouteRequest) -> dict[str, Any]:
        routed = router.route(body.query, threshold=body.threshold, unit_id=body.unit_id)
        return routed.to_dict(passage_text=body.passage_text)

    @app.post("/route_batch")
    def route_batch(body: RouteBatchRequest) -> list[dict[str, Any]]:
        routed = router.route_batch(body.queries, threshold=body.threshold, unit_ids=body.unit_ids)
        return [r.to_dict(passage_text=body.passage_text) for r in routed]

    @app.post("/feedback")
    def feedback(body: FeedbackRequest) -> Any:
        if decision_log is None:
            return JSONResponse(
                status_code=503,
                content={"error": "this server logs no decisions (no experiment decision log)"},
            )
        try:
            decision_log.request(body.request_id)
        except ExperimentError as exc:
            return JSONResponse(
                status_code=404, content={"error": str(exc), "type": type(exc).__name__}
            )
        outcome = Outcome(body.request_id, body.correct, body.score, body.label_source)
        try:
            return {"recorded": decision_log.record_outcomes([outcome])}
        except ExperimentError as exc:  # an invalid outcome (e.g. a NaN score)
            return JSONResponse(
                status_code=422, content={"error": str(exc), "type": type(exc).__name__}
            )

    return app
