"""One error shape for every endpoint: OpenAI's error object.

Every error the server returns - its own, FastAPI's validation errors, Starlette's 404/405/413 -
is ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status below, so a client
(OpenAI's SDKs included) parses one shape everywhere:

====== ======================== ==========================================================
status type                     code (examples)
====== ======================== ==========================================================
400    invalid_request_error    ``invalid_json``; ``invalid_request`` and
                                ``unsupported_parameter`` on ``/v1``
404    not_found_error          ``not_found``, ``model_not_found``, ``unknown_request``
405    not_found_error          ``method_not_allowed``
409    invalid_request_error    ``experiment_error``
413    invalid_request_error    ``body_too_large``
422    invalid_request_error    ``invalid_request`` (knowgate's endpoints), ``input_error``,
                                ``policy_error``
429    rate_limit_error         ``queue_full`` (with ``Retry-After``)
499    invalid_request_error    ``client_disconnected`` (nobody reads it; counted in metrics)
500    server_error             ``internal_error``
503    server_error             ``not_ready``, ``shutting_down``, ``no_decision_log``
504    timeout_error            ``timeout``
====== ======================== ==========================================================

Validation errors are 400 on the OpenAI endpoints (``/v1/...``), as OpenAI answers them, and 422
on knowgate's own, as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from knowgate.errors import (
    ExperimentError,
    InputError,
    KnowgateError,
    PolicyError,
    RemoteResponseError,
    RemoteUnavailableError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from knowgate.integrations.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
OPENAI_PREFIX = "/v1/"


class ErrorDetail(BaseModel):
    """What went wrong (OpenAI's error object)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ServingError(Exception):
    """An error the server answers with a status, a code and a message.

    Args:
        status: the HTTP status.
        message: what is wrong, for the client.
        code: a stable machine-readable reason (see the module table).
        param: the request field at fault, if one is.
        headers: extra response headers (``Retry-After`` for 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the error."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error (also sent as the ``error`` event of a broken stream)."""
    detail = ErrorDetail(
        message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code
    )
    return ErrorResponse(error=detail).model_dump()


def knowgate_status(exc: KnowgateError) -> int:
    """The HTTP status of a knowgate error raised while routing."""
    if isinstance(exc, ExperimentError):
        return 409
    if isinstance(exc, RemoteUnavailableError):  # the served model behind the router is down
        return 503
    if isinstance(exc, RemoteResponseError):  # it answered unusably
        return 502
    if isinstance(exc, InputError | PolicyError | ValueError):
        return 422
    return 500


def snake_case(name: str) -> str:
    """``InputError`` -> ``input_error``: knowgate's exception classes as error codes."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def describe_validation(exc: RequestValidationError) -> tuple[str, str, str | None]:
    """``(message, code, param)`` of a request FastAPI could not parse or validate."""
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "malformed")
            loc = e.get("loc", ())
            at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            return f"request body is not valid JSON: {reason}{at}", "invalid_json", None
    problems = []
    for e in errors:
        where = _location(e.get("loc", ()))
        if e.get("type") == "extra_forbidden":
            problems.append(f"unknown field {where!r}")
        elif e.get("type") == "missing":
            problems.append(f"{where}: required field missing")
        else:
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
    first = _location(errors[0].get("loc", ())) if errors else None
    return "invalid request: " + "; ".join(problems), "invalid_request", first


def install_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    """Answer every error of ``app`` in the one shape, and count it by code."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONResponse:
        metrics.errors.labels(code).inc()
        return JSONResponse(
            status_code=status,
            content=error_body(status, message, code, param),
            headers=dict(headers or {}),
        )

    @app.exception_handler(ServingError)
    async def _serving(request: Request, exc: ServingError) -> JSONResponse:
        return respond(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(KnowgateError)
    async def _knowgate(request: Request, exc: KnowgateError) -> JSONResponse:
        status = knowgate_status(exc)
        if status == 500:
            log.error("request failed: %s: %s", type(exc).__name__, exc)
        return respond(status, str(exc), snake_case(type(exc).__name__))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, code, param = describe_validation(exc)
        if code == "invalid_json":
            status = 400
        else:
            status = 400 if request.url.path.startswith(OPENAI_PREFIX) else 422
        return respond(status, message, code, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message, code = f"no endpoint {request.url.path}", "not_found"
        elif status == 405:
            message, code = (
                f"{request.method} is not allowed on {request.url.path}",
                ("method_not_allowed"),
            )
        elif status == 413:
            message, code = str(exc.detail), "body_too_large"
        else:
            message, code = str(exc.detail), f"http_{status}"
        return respond(status, message, code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return respond(500, f"internal server error ({type(exc).__name__})", "internal_error")
