"""A fake OpenAI-compatible server (an httpx MockTransport) for the remote backend's tests.

Responses are written by hand per question, so every feature a test checks is computed from
numbers the test chose (not from the code under test).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from knowgate.models import ModelConfig, RemoteModel

BASE_URL = "http://fake-server:8000/v1"
MODEL = "fake-model"


def token(text: str, logprob: float, alternatives: list[float]) -> dict[str, Any]:
    """One ``logprobs.content`` entry; the chosen token is listed first among the alternatives."""
    top = [{"token": text, "logprob": logprob}]
    top += [{"token": f"alt{i}", "logprob": lp} for i, lp in enumerate(alternatives)]
    return {"token": text, "logprob": logprob, "bytes": None, "top_logprobs": top}


def completion(
    content: str,
    tokens: list[dict[str, Any]] | None,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 30,
    extra_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``/chat/completions`` response body; ``tokens=None`` leaves logprobs out."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
        "logprobs": None if tokens is None else {"content": tokens, "refusal": None},
    }
    choice.update(extra_choice or {})
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": 32},
    }


Reply = dict[str, Any] | httpx.Response | Exception


@dataclass
class FakeServer:
    """Answers by the question in the last user message; records every request.

    Attributes:
        replies: question -> reply (a JSON body, a ready response, or an exception to raise);
            a list of replies is consumed one per request (for retries).
        default: reply for questions not in ``replies``.
        models: the ``/models`` listing.
        requests: every request received, as ``(method, path, json body or None, headers)``.
    """

    replies: dict[str, Reply | list[Reply]] = field(default_factory=dict)
    default: Reply | None = None
    models: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": MODEL, "object": "model", "created": 1, "owned_by": "me"}]
    )
    requests: list[tuple[str, str, Any, dict[str, str]]] = field(default_factory=list)
    on_request: Callable[[httpx.Request], None] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body, dict(request.headers)))
        if self.on_request is not None:
            self.on_request(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": self.models})
        question = body["messages"][-1]["content"].rsplit("Question: ", 1)[-1]
        reply = self.replies.get(question, self.default)
        if isinstance(reply, list):
            reply = reply.pop(0)
        if reply is None:
            return httpx.Response(500, json={"error": {"message": f"no reply for {question!r}"}})
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply)

    def chat_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests, in order."""
        return [b for _, path, b, _ in self.requests if path.endswith("/chat/completions")]

    def model(self, **remote: Any) -> RemoteModel:
        """A RemoteModel talking to this fake server (no sleeping between retries)."""
        settings = {"base_url": BASE_URL, "model": MODEL, "backoff_s": 0.0, **remote}
        model = RemoteModel(
            ModelConfig(remote=settings), transport=httpx.MockTransport(self.handler)
        )
        model._sleep = self.sleeps.append  # type: ignore[method-assign]
        return model

    sleeps: list[float] = field(default_factory=list)
