"""The OpenAI-compatible surface: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client (the official SDKs, LangChain's ``ChatOpenAI(base_url=...)``) then uses
knowgate as a chat model that does gated RAG. The rules, documented in docs/serving.md:

- **The query** is the text of the last message, which must come from the user (``user``
  role; string content, or ``text`` content parts joined with newlines). knowgate answers single
  questions: ``system`` and ``developer`` messages and earlier turns are ignored (the model's
  own prompt applies), and each ignored message is listed in the response's notes.
- **model** must be the served model's id (``GET /v1/models``) or the alias ``knowgate``.
- **Decoding is greedy** and stops as the router's config says. Parameters that only tune
  sampling or length (``temperature``, ``top_p``, ``max_tokens``, ``max_completion_tokens``,
  ``stop``, penalties, ``seed``, ``stream_options``, ``user``-less metadata ...) are accepted
  and have no effect; the response's notes name those that were given. ``user`` is the A/B unit
  id unless ``knowgate.unit_id`` is given.
- **Refused** with 400 ``unsupported_parameter``: ``n`` > 1, tools and functions, non-text
  response formats, logprobs, logit bias, non-text modalities or content parts, and any
  parameter this module does not know.
- **knowgate's trace** travels in the extension field ``knowgate`` of the completion (of the
  last chunk when streaming): request id, decision (retrieve, p_known, threshold, policy, mode,
  reason), passages, calls, timings, the server's queue and batch times, the experiment arm, and
  the notes. Non-streamed responses also carry it in ``X-Knowgate-*`` headers. Request-side
  options go in the body's ``knowgate`` object (``extra_body={"knowgate": {...}}`` in the SDK):
  ``threshold``, ``unit_id``, ``passage_text``, ``timeout_s``.
- **usage** is not reported (``null``): the router does not count tokens per request.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from knowgate.integrations.serving.errors import ServingError
from knowgate.routing import RoutedAnswer

MODEL_ALIAS = "knowgate"
"""The model name every server answers to, besides its model's id."""

# Accepted, but decoding is greedy and bounded by the router's config: they change nothing.
NO_EFFECT = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stream_options",
    "parallel_tool_calls",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnowgateOptions(_Strict):
    """knowgate's request options (``extra_body={"knowgate": {...}}``)."""

    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    unit_id: str | int | None = None
    passage_text: bool = False
    timeout_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)


class ChatMessage(_Strict):
    """One message of the conversation (OpenAI's fields; only the last user text is used)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``: the parameters knowgate knows (others are refused)."""

    model: str = Field(..., min_length=1)
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    knowgate: KnowgateOptions = KnowgateOptions()
    # Refused unless harmless (see check_supported).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    # No effect (see NO_EFFECT).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    stream_options: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def check_supported(self) -> None:
        """Refuse what knowgate cannot do, naming the parameter.

        Raises:
            ServingError: 400 ``unsupported_parameter``.
        """

        def refuse(param: str, why: str) -> ServingError:
            return ServingError(
                400,
                f"unsupported parameter {param!r}: {why}",
                code="unsupported_parameter",
                param=param,
            )

        if self.n is not None and self.n != 1:
            raise refuse("n", "knowgate returns one greedy answer (n must be 1)")
        if self.tools or self.functions:
            param = "tools" if self.tools else "functions"
            raise refuse(param, "knowgate answers questions; it does not call tools")
        for param, choice in (
            ("tool_choice", self.tool_choice),
            ("function_call", self.function_call),
        ):
            if choice is not None and choice != "none":
                raise refuse(param, "knowgate does not call tools (only 'none' is accepted)")
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise refuse("response_format", "only {'type': 'text'} is supported")
        if self.logprobs or self.top_logprobs is not None:
            raise refuse("logprobs", "token log-probabilities are not returned")
        if self.logit_bias:
            raise refuse("logit_bias", "decoding is greedy and unbiased")
        if self.modalities is not None and self.modalities != ["text"]:
            raise refuse("modalities", "only ['text'] is supported")

    def no_effect(self) -> list[str]:
        """The given parameters that change nothing (greedy decoding, the router's limits)."""
        given = self.model_fields_set
        return [p for p in NO_EFFECT if p in given and getattr(self, p) is not None]

    def query(self) -> tuple[str, list[str]]:
        """The question (the last message's text) and notes on the messages ignored.

        Raises:
            ServingError: 400 when the last message is not a user's text, or is empty.
        """
        last = self.messages[-1]
        where = f"messages.{len(self.messages) - 1}"
        if last.role != "user":
            raise ServingError(
                400,
                f"the last message must be the user's question, got role {last.role!r} "
                f"(knowgate answers the last user message)",
                code="invalid_request",
                param=f"{where}.role",
            )
        if isinstance(last.content, list):
            texts = []
            for i, part in enumerate(last.content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ServingError(
                        400,
                        f"unsupported content part of type {part.get('type')!r}: knowgate "
                        f"reads text only",
                        code="unsupported_parameter",
                        param=f"{where}.content.{i}",
                    )
                texts.append(part["text"])
            text = "\n".join(texts)
        else:
            text = last.content or ""
        if not text.strip():
            raise ServingError(
                400,
                "the last user message is empty",
                code="invalid_request",
                param=f"{where}.content",
            )
        notes = [
            f"ignored messages[{i}] ({m.role}): knowgate answers the last user message alone"
            for i, m in enumerate(self.messages[:-1])
        ]
        return text, notes


def resolve_model(requested: str, model_id: str) -> str:
    """The served model's id, if ``requested`` names it (or the alias).

    Raises:
        ServingError: 404 ``model_not_found``.
    """
    if requested in (model_id, MODEL_ALIAS):
        return model_id
    raise ServingError(
        404,
        f"model {requested!r} is not served here; use {model_id!r} or {MODEL_ALIAS!r} "
        f"(GET /v1/models)",
        code="model_not_found",
        param="model",
    )


def model_card(model_id: str, created: int) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "knowgate"}


def extension(
    routed: RoutedAnswer,
    serving: dict[str, Any],
    notes: list[str],
    *,
    passage_text: bool = False,
) -> dict[str, Any]:
    """The ``knowgate`` extension field: the request's trace, minus the features."""
    trace = routed.to_dict(passage_text=passage_text)
    return {
        "request_id": routed.request_id,
        "decision": asdict(routed.decision),
        "passages": trace["passages"],
        "calls": routed.calls,
        "timings_ms": routed.timings_ms,
        "serving": serving,
        "retrieval_error": routed.retrieval_error,
        "experiment": routed.extra.get("experiment"),
        "notes": notes,
    }


def trace_headers(routed: RoutedAnswer, serving: dict[str, Any]) -> dict[str, str]:
    """The decision as response headers (for clients that only see headers)."""
    d = routed.decision
    return {
        "X-Request-ID": routed.request_id,
        "X-Knowgate-Retrieve": "true" if d.retrieve else "false",
        "X-Knowgate-P-Known": "none" if d.p_known is None else f"{d.p_known:.6f}",
        "X-Knowgate-Threshold": "none" if d.threshold is None else f"{d.threshold:.6f}",
        "X-Knowgate-Policy": d.policy,
        "X-Knowgate-Passages": ",".join(p.id for p in routed.passages),
        "X-Knowgate-Latency-Ms": f"{routed.timings_ms.get('total', 0.0):.2f}",
        "X-Knowgate-Queue-Ms": "none"
        if serving.get("queue_ms") is None
        else f"{serving['queue_ms']:.2f}",
    }


def completion(
    routed: RoutedAnswer, *, model: str, created: int, knowgate: dict[str, Any]
) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": completion_id(routed.request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": routed.answer, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": None,
        "knowgate": knowgate,
    }


def completion_id(request_id: str) -> str:
    """The completion id of a request (its request id, OpenAI-style)."""
    return f"chatcmpl-{request_id}"


def chunk(
    request_id: str,
    *,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    knowgate: dict[str, Any] | None = None,
) -> str:
    """One ``chat.completion.chunk``, as the JSON text of an SSE ``data`` field."""
    body: dict[str, Any] = {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if knowgate is not None:
        body["knowgate"] = knowgate
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
