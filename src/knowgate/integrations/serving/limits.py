"""The request body limit, answered in the one error shape.

Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) replaces *any* response
to a request whose declared ``Content-Length`` is over the limit with its own plain-text 413, so
no exception handler can give that error the documented JSON shape. This middleware enforces the
same limit first: a declared length over it is answered at once, without reading the body; a
body that grows past it while streaming in (chunked, or a lying ``Content-Length``) raises a 413
``HTTPException`` from ``receive``, which the app's handler answers like every other error.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from knowgate.integrations.serving.errors import error_body

SCOPE_KEY = "knowgate.max_body_bytes"
"""Where the middleware leaves the limit for the error handler's message."""


def too_large_message(limit: int) -> str:
    """The 413 message."""
    return f"request body is larger than the limit of {limit} bytes"


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: Any, max_body_bytes: int, on_refuse: Any = None) -> None:
        """Wrap ``app``; ``on_refuse()`` is called for each refusal sent from here."""
        self.app = app
        self.limit = max_body_bytes
        self.on_refuse = on_refuse

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Check the declared length, then count the bytes as the app reads them."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self.limit
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            if self.on_refuse is not None:
                self.on_refuse()
            body = error_body(413, too_large_message(self.limit), "body_too_large")
            await JSONResponse(body, status_code=413, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, counted, send)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
