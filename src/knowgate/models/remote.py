"""A model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

Most production models run behind a server (vLLM, SGLang, llama.cpp, Ollama). Such a model
cannot be prefilled without decoding, and its activations are out of reach, so knowgate gates it
the one way a server allows: **one short greedy draft** with ``logprobs`` and ``top_logprobs``.
The draft's token probabilities give the uncertainty features
(:func:`knowgate.signals.compute_served_features`); when the gate says "known", the draft *is*
the answer, so a known query costs one call. Where the server also returns the last-layer hidden
state (SGLang's ``return_hidden_states``), its sparsity features are computed too. A retrieving
query costs a second call, with the passages in the messages.

The server applies its own chat template, so requests carry messages (system + user), built from
the same :class:`~knowgate.models.config.PromptConfig` as a local model's prompts.

Faults get clear errors (:class:`~knowgate.errors.RemoteUnavailableError`,
:class:`~knowgate.errors.RemoteResponseError`). Only failures that are safe to retry are
retried, with exponential backoff and jitter (a ``Retry-After`` header wins): a connection that
could not be made (the request never reached the server), 429 rate limits, and 502/503 from a
server or proxy that did not take the request. A timed-out request is not retried (the server
may still be working on it, and a retry doubles the load that made it slow), nor is a malformed
response (it would come back the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from knowgate.errors import (
    ConfigError,
    InputError,
    RemoteResponseError,
    RemoteUnavailableError,
    SignalError,
)
from knowgate.models.config import ModelConfig, RemoteConfig
from knowgate.models.prompts import PassageLike, PromptFormatter
from knowgate.signals import (
    TopKStats,
    compute_served_features,
    feature_names,
    served_hidden_feature_names,
)

log = logging.getLogger(__name__)

RemoteStopReason = Literal["newline", "stop", "length"]
"""Why a served draft ended: a token holding a newline (the answer is cut there, as a local
draft is), the server's own stop (end-of-sequence, or a stop string whose token the server left
out), or ``max_tokens``."""
RETRY_STATUS = frozenset({429, 502, 503})
"""HTTP statuses that say the request was not served and may be sent again."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class RemoteDraft:
    """One greedy closed-book draft from the server, with its features.

    Attributes:
        text: the answer (cut at the first newline when the config stops there; stripped).
        stop_reason: see :data:`RemoteStopReason`.
        features: the served features (:func:`~knowgate.signals.compute_served_features`);
            empty when the server scored no token (the draft ended at once), see
            ``missing_reason``.
        stats: top-k log-probabilities of the answer tokens (stop token excluded; when the answer
            is empty, the stop token, as a local draft does); ``None`` when no token was scored.
        next_token: top-k log-probabilities at the end of the prompt (the first generated
            position); ``None`` when no token was scored.
        tokens: the text of every scored token, as the server returned them.
        prompt_tokens: prompt length the server reported (``usage.prompt_tokens``), if any.
        seconds: wall time of the call, retries included.
        retries: retries the call needed.
        missing_reason: why ``features`` is empty, else ``None``.
    """

    text: str
    stop_reason: RemoteStopReason
    features: dict[str, float]
    stats: TopKStats | None
    next_token: TopKStats | None
    tokens: tuple[str, ...]
    prompt_tokens: int | None
    seconds: float
    retries: int = 0
    missing_reason: str | None = None


@dataclass(frozen=True)
class RemoteAnswer:
    """One answer from the server (no probabilities asked for).

    Attributes:
        text: the answer (cut at the first newline when the config stops there; stripped).
        stop_reason: see :data:`RemoteStopReason` (``stop`` when the server stopped).
        prompt_tokens: prompt length the server reported, if any.
        seconds: wall time of the call, retries included.
        retries: retries the call needed.
    """

    text: str
    stop_reason: RemoteStopReason
    prompt_tokens: int | None
    seconds: float
    retries: int = 0


class ChatPromptFormatter(PromptFormatter):
    """Prompts for a served model: chat messages, the server applies its chat template.

    :meth:`format` writes the messages as canonical JSON: a stable text to hash into cache keys
    and to show, not what the model sees (that is the server's template over them).
    """

    @property
    def style(self) -> Literal["chat", "few_shot"]:
        """Always ``chat``: servers take messages."""
        return "chat"

    def format(self, question: str, passages: Sequence[PassageLike] | None = None) -> str:
        """The messages of ``question`` (with ``passages``) as canonical JSON."""
        return json.dumps(self.messages(question, passages), sort_keys=True, ensure_ascii=False)


class _Retryable(Exception):
    """A failure that is safe to retry; carries the error to raise when retries run out."""

    def __init__(self, error: RemoteUnavailableError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: use our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_detail(response: httpx.Response) -> str:
    """The server's own error message, if it sent one (OpenAI-style, FastAPI-style or text)."""
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:300]
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if "detail" in payload:
            return json.dumps(payload["detail"])[:300]
        if payload.get("message"):
            return str(payload["message"])[:300]
    return json.dumps(payload)[:300]


def _field(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise RemoteResponseError(
            f"malformed response: {where} should be {expected}, got {type(value).__name__}"
        )
    return value


def _number(value: Any, where: str) -> float:
    number = float(_field(value, (int, float), where))
    if math.isnan(number):
        raise RemoteResponseError(f"malformed response: {where} is NaN")
    return number


class RemoteModel:
    """A model behind an OpenAI-compatible server, gated by one greedy draft with logprobs.

    It offers the part of the model interface the router's ``draft`` gate needs -
    :meth:`draft` (closed-book, with features) and :meth:`answer` (with passages) - plus the
    identity a cache key needs (:meth:`identity`). Requests of a batch run concurrently (up to
    ``remote.concurrency``); one instance may be shared by threads.

    Args:
        config: a model config whose ``remote`` section names the server.
        transport: an httpx transport to use instead of the network (tests).

    Raises:
        ConfigError: no ``remote`` section, a few-shot prompt style (servers take chat
            messages), or an API-key variable that is not set.
    """

    backend = "openai-chat"

    def __init__(self, config: ModelConfig, *, transport: httpx.BaseTransport | None = None):
        """Set up the client; nothing is sent until the first request."""
        if config.remote is None:
            raise ConfigError(
                "a remote model needs model.remote (or a source openai:<base_url>#<model>)"
            )
        if config.prompt.style == "few_shot":
            raise ConfigError(
                "model.prompt.style few_shot cannot be served: a remote model takes chat messages "
                "and its server applies the chat template; use style auto or chat"
            )
        self.config = config
        self.remote: RemoteConfig = config.remote
        self.model_id = self.remote.identity
        self.formatter = ChatPromptFormatter(config.prompt, None)
        headers = {"Accept": "application/json"}
        key = self._api_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.remote.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.remote.timeout_s, connect=self.remote.connect_timeout_s),
            transport=transport,
        )
        self._server_entry: dict[str, Any] | None = None
        self._identity_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep

    @classmethod
    def load(cls, source: str | ModelConfig) -> RemoteModel:
        """A remote model from a source ``openai:<base_url>#<model>`` or a model config."""
        config = source if isinstance(source, ModelConfig) else ModelConfig(source=source)
        return cls(config)

    def _api_key(self) -> str | None:
        name = self.remote.api_key_env
        if name is None:
            return None
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(
                f"model.remote.api_key_env names ${name}, which is not set; export the server's "
                f"API key in it (or drop api_key_env for a server without keys)"
            )
        return value

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def architecture(self) -> str:
        """What serves the model (a served model's architecture is the server's business)."""
        return f"served ({self.backend})"

    def __repr__(self) -> str:
        return f"<RemoteModel {self.remote.model!r} at {self.remote.base_url}>"

    # ----------------------------------------------------------------------------- prompts
    def messages(
        self, question: str, passages: Sequence[PassageLike] | None = None
    ) -> list[dict[str, str]]:
        """The chat messages for ``question`` (closed-book, or with ``passages``)."""
        return self.formatter.messages(question, passages)

    def format_prompt(self, question: str, passages: Sequence[PassageLike] | None = None) -> str:
        """The messages as canonical JSON (see :class:`ChatPromptFormatter`)."""
        return self.formatter.format(question, passages)

    # --------------------------------------------------------------------------- features
    def feature_names(self) -> list[str]:
        """Every model feature this server's drafts provide (question-only ones aside)."""
        uncertainty = feature_names(family="uncertainty", backend="served")
        hidden = served_hidden_feature_names() if self.remote.hidden_states else []
        return uncertainty + hidden

    # ---------------------------------------------------------------------------- identity
    def server_entry(self) -> dict[str, Any] | None:
        """The server's ``/models`` entry of this model (``created`` dropped), memoised.

        Returns:
            The entry, or ``None`` when the server has no ``/models`` endpoint (404).

        Raises:
            RemoteUnavailableError: the server cannot be reached.
            RemoteResponseError: the server lists models, but not this one.
        """
        with self._identity_lock:
            if self._server_entry is not None:
                return self._server_entry or None
            try:
                payload, _ = self._request("GET", "models", None)
            except RemoteResponseError as exc:
                if "(404)" not in str(exc):
                    raise
                log.warning("%s has no /models endpoint; its identity is its name", self)
                self._server_entry = {}
                return None
            data = payload.get("data") if isinstance(payload, Mapping) else None
            if not isinstance(data, list):
                raise RemoteResponseError(
                    f"malformed /models response from {self.remote.base_url}: no 'data' list"
                )
            entries = {str(e.get("id")): e for e in data if isinstance(e, Mapping)}
            if self.remote.model not in entries:
                raise RemoteResponseError(
                    f"the server at {self.remote.base_url} does not serve {self.remote.model!r}; "
                    f"it lists {sorted(entries)[:10]}"
                )
            entry = {k: v for k, v in entries[self.remote.model].items() if k != "created"}
            self._server_entry = entry
            return entry

    def identity(self) -> dict[str, Any]:
        """What identifies the served weights, as a JSON-able dict (it keys the caches).

        The base URL, the model name, the configured ``model_id`` and ``revision``, the
        server's ``/models`` entry (vLLM lists the checkpoint path and context length there;
        llama.cpp and Ollama little more than the name), and the request settings that change
        the features. A server can swap weights behind the same name and entry: pin
        ``remote.revision`` to what you deployed.
        """
        entry = self.server_entry()
        return {
            "backend": self.backend,
            "base_url": self.remote.base_url,
            "model": self.remote.model,
            "model_id": self.model_id,
            "revision": self.remote.revision,
            "server_entry": entry,
            "server_entry_sha256": hashlib.sha256(
                json.dumps(entry, sort_keys=True, default=str).encode()
            ).hexdigest()
            if entry is not None
            else None,
            "top_logprobs": self.remote.top_logprobs,
            "hidden_states": self.remote.hidden_states,
            "extra_body": self.remote.extra_body,
        }

    # ---------------------------------------------------------------------------- requests
    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[Any, int]:
        """Send one request with retries where safe; ``(parsed JSON, retries used)``."""
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            return self._send(method, path, body)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            cap = self.remote.max_backoff_s
            if isinstance(error, _Retryable) and error.retry_after is not None:
                return min(error.retry_after, cap)
            base = self.remote.backoff_s * 2 ** (state.attempt_number - 1)
            return min(cap, base + random.uniform(0.0, self.remote.backoff_s))

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "%s %s: %s; retry %d of %d",
                method,
                path,
                error,
                state.attempt_number,
                self.remote.max_retries,
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.remote.max_retries + 1),
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            sleep=lambda s: self._sleep(s),
            reraise=True,
        )
        try:
            return retrying(once), attempts - 1
        except _Retryable as exc:
            suffix = (
                f" (gave up after {self.remote.max_retries} retries)"
                if self.remote.max_retries
                else ""
            )
            raise RemoteUnavailableError(f"{exc.error}{suffix}") from exc

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.remote.base_url}/{path}"
        try:
            response = self._client.request(method, path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(
                RemoteUnavailableError(
                    f"cannot connect to the model server at {self.remote.base_url} ({exc}); is "
                    "it running, and is base_url right?"
                )
            ) from exc
        except httpx.TimeoutException as exc:
            raise RemoteUnavailableError(
                f"no response from {url} within {self.remote.timeout_s:g} s "
                f"(model.remote.timeout_s); not retried, the server may still be working on it"
            ) from exc
        except httpx.HTTPError as exc:
            raise RemoteUnavailableError(
                f"the connection to {url} failed mid-request ({type(exc).__name__}: {exc}); "
                "not retried, the server may have received it"
            ) from exc
        status = response.status_code
        if status in RETRY_STATUS:
            what = "rate limited" if status == 429 else "unavailable"
            raise _Retryable(
                RemoteUnavailableError(f"{url} is {what} ({status}): {_error_detail(response)}"),
                _retry_after(response),
            )
        if status in (401, 403):
            hint = (
                f"check the key in ${self.remote.api_key_env}"
                if self.remote.api_key_env
                else "set model.remote.api_key_env to the variable holding the key"
            )
            raise RemoteResponseError(
                f"{url} refused the request ({status}): {_error_detail(response)}; {hint}"
            )
        if status >= 500:
            raise RemoteUnavailableError(
                f"{url} failed ({status}): {_error_detail(response)}; not retried (a server "
                "error on the same request usually repeats)"
            )
        if status >= 400:
            detail = _error_detail(response)
            hint = (
                "; lower model.remote.top_logprobs to the server's cap (vLLM: --max-logprobs)"
                if "logprob" in detail.lower()
                else ""
            )
            raise RemoteResponseError(f"{url} rejected the request ({status}): {detail}{hint}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RemoteResponseError(
                f"malformed response from {url}: not JSON ({response.text.strip()[:200]!r})"
            ) from exc

    def _body(
        self, messages: list[dict[str, str]], *, logprobs: bool, max_new_tokens: int | None
    ) -> dict[str, Any]:
        generation = self.config.generation
        body: dict[str, Any] = {
            "model": self.remote.model,
            "messages": messages,
            "max_tokens": max_new_tokens or generation.max_new_tokens,
            "temperature": 0.0,
            "n": 1,
            "stream": False,
        }
        if generation.stop_at_newline:
            body["stop"] = ["\n"]
        if logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.remote.top_logprobs
            if self.remote.hidden_states:
                body["return_hidden_states"] = True
        return {**body, **self.remote.extra_body}

    def _chat(self, body: dict[str, Any]) -> tuple[Mapping[str, Any], int, float]:
        start = time.perf_counter()
        payload, retries = self._request("POST", "chat/completions", body)
        seconds = time.perf_counter() - start
        if not isinstance(payload, Mapping):
            raise RemoteResponseError("malformed response: the body is not a JSON object")
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RemoteResponseError("malformed response: no 'choices'")
        choice = _field(choices[0], Mapping, "choices[0]")
        return {**choice, "_usage": payload.get("usage")}, retries, seconds

    @staticmethod
    def _content(choice: Mapping[str, Any]) -> str:
        message = _field(choice.get("message"), Mapping, "choices[0].message")
        content = message.get("content")
        if content is None:
            return ""
        return str(_field(content, str, "choices[0].message.content"))

    @staticmethod
    def _prompt_tokens(choice: Mapping[str, Any]) -> int | None:
        usage = choice.get("_usage")
        if isinstance(usage, Mapping) and isinstance(usage.get("prompt_tokens"), int):
            return int(usage["prompt_tokens"])
        return None

    def _cut(self, text: str) -> str:
        if self.config.generation.stop_at_newline:
            text = text.split("\n", 1)[0]
        return text.strip()

    def _finish(self, choice: Mapping[str, Any]) -> RemoteStopReason:
        return "length" if choice.get("finish_reason") == "length" else "stop"

    # ------------------------------------------------------------------------------ drafts
    def _parse_draft(self, choice: Mapping[str, Any], retries: int, seconds: float) -> RemoteDraft:
        content = self._content(choice)
        logprobs = choice.get("logprobs")
        entries = logprobs.get("content") if isinstance(logprobs, Mapping) else None
        if entries is None:
            raise RemoteResponseError(
                f"the server at {self.remote.base_url} returned no logprobs for "
                f"{self.remote.model!r}; knowgate gates a served model on its token "
                "probabilities and needs logprobs and top_logprobs on /chat/completions "
                "(vLLM, SGLang, llama.cpp and recent Ollama return them; see docs/remote.md)"
            )
        _field(entries, list, "choices[0].logprobs.content")
        tokens: list[str] = []
        chosen: list[float] = []
        alternatives: list[list[float]] = []
        for i, entry in enumerate(entries):
            where = f"choices[0].logprobs.content[{i}]"
            _field(entry, Mapping, where)
            tokens.append(str(_field(entry.get("token"), str, f"{where}.token")))
            chosen.append(_number(entry.get("logprob"), f"{where}.logprob"))
            top = _field(entry.get("top_logprobs"), list, f"{where}.top_logprobs")
            values = [
                _number(_field(t, Mapping, f"{where}.top_logprobs[{j}]").get("logprob"), where)
                for j, t in enumerate(top)
            ]
            if values and chosen[-1] > max(values) + 1e-6:
                values.append(chosen[-1])  # the server left the chosen token out of its list
            if len(values) < 2:
                raise RemoteResponseError(
                    f"the server returned {len(values)} top_logprobs for a token (asked for "
                    f"{self.remote.top_logprobs}); knowgate needs at least 2 (the top-1/top-2 "
                    "margin): does the server honour top_logprobs?"
                )
            alternatives.append(values)
        stop_reason = self._finish(choice)
        keep = len(entries)
        if self.config.generation.stop_at_newline:
            newline = next((i for i, t in enumerate(tokens) if "\n" in t), None)
            if newline is not None:
                stop_reason = "newline"
                keep = max(newline, 1)  # an empty answer keeps its stop token, as locally
        text = self._cut(content)
        if not entries:
            return RemoteDraft(
                text=text,
                stop_reason=stop_reason,
                features={},
                stats=None,
                next_token=None,
                tokens=(),
                prompt_tokens=self._prompt_tokens(choice),
                seconds=seconds,
                retries=retries,
                missing_reason="the server scored no token (the draft ended at once)",
            )
        k = self.remote.top_logprobs
        all_stats = TopKStats.from_rows(chosen, alternatives, k=k)
        hidden, missing = self._hidden_state(choice)
        try:
            features = compute_served_features(
                all_stats.slice(0, keep), next_token=all_stats.slice(0, 1), hidden=hidden
            )
        except SignalError as exc:
            raise RemoteResponseError(f"unusable logprobs from the server: {exc}") from exc
        return RemoteDraft(
            text=text,
            stop_reason=stop_reason,
            features=features,
            stats=all_stats.slice(0, keep),
            next_token=all_stats.slice(0, 1),
            tokens=tuple(tokens),
            prompt_tokens=self._prompt_tokens(choice),
            seconds=seconds,
            retries=retries,
            missing_reason=missing,
        )

    def _hidden_state(self, choice: Mapping[str, Any]) -> tuple[list[float] | None, str | None]:
        """The last-layer hidden state of the response, if asked for and returned."""
        if not self.remote.hidden_states:
            return None, None
        if "hidden_states" not in choice:
            raise RemoteResponseError(
                f"model.remote.hidden_states is on, but the server at {self.remote.base_url} "
                "returned no hidden_states; SGLang returns them when started with "
                "--enable-return-hidden-states (other servers do not)"
            )
        value = choice["hidden_states"]
        if value is None or value == []:
            # SGLang returns [] when the draft had a single token (no decode step).
            return None, "the server returned an empty hidden state"
        _field(value, list, "choices[0].hidden_states")
        if value and isinstance(value[0], list):
            value = value[-1]
        vector = [_number(v, "choices[0].hidden_states") for v in value]
        return vector, None

    def draft(
        self, questions: Sequence[str], *, max_new_tokens: int | None = None
    ) -> list[RemoteDraft]:
        """One greedy closed-book draft per question, with logprobs and its features.

        Requests run concurrently (``remote.concurrency``); the first failure is raised.

        Raises:
            InputError: an empty or non-string question.
            RemoteUnavailableError: the server is down, timed out or kept refusing.
            RemoteResponseError: the server rejected the request or answered unusably (no
                logprobs, malformed JSON).
        """
        self._check(questions)

        def one(question: str) -> RemoteDraft:
            body = self._body(self.messages(question), logprobs=True, max_new_tokens=max_new_tokens)
            choice, retries, seconds = self._chat(body)
            return self._parse_draft(choice, retries, seconds)

        return self._map(one, list(questions))

    def answer(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[PassageLike]],
        *,
        max_new_tokens: int | None = None,
    ) -> list[RemoteAnswer]:
        """One greedy answer per question with its passages in the messages (no logprobs).

        Raises:
            InputError: bad questions, or a passage list per question missing.
            RemoteUnavailableError: the server is down, timed out or kept refusing.
            RemoteResponseError: the server rejected the request or answered unusably.
        """
        self._check(questions)
        if len(passages) != len(questions):
            raise InputError(f"{len(passages)} passage lists for {len(questions)} questions")

        def one(item: tuple[str, Sequence[PassageLike]]) -> RemoteAnswer:
            question, found = item
            body = self._body(
                self.messages(question, found or None),
                logprobs=False,
                max_new_tokens=max_new_tokens,
            )
            choice, retries, seconds = self._chat(body)
            return RemoteAnswer(
                text=self._cut(self._content(choice)),
                stop_reason=self._finish(choice),
                prompt_tokens=self._prompt_tokens(choice),
                seconds=seconds,
                retries=retries,
            )

        return self._map(one, list(zip(questions, passages, strict=True)))

    @staticmethod
    def _check(questions: Sequence[str]) -> None:
        if isinstance(questions, str):
            raise InputError("pass a list of questions; wrap a single question in a list")
        for q in questions:
            if not isinstance(q, str):
                raise InputError(f"questions must be strings, got {type(q).__name__}")
            if not q.strip():
                raise InputError("question is empty")

    def _map(self, fn: Callable[[Any], _T], items: list[Any]) -> list[_T]:
        if len(items) <= 1 or self.remote.concurrency == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.remote.concurrency, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()
