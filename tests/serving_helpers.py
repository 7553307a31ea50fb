"""Shared by the serving tests: a scripted router and a live server on loopback."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from knowgate.errors import InputError
from knowgate.routing import DecisionTrace, RoutedAnswer


class ScriptedRouter:
    """A QueryRouter stand-in for the server's own mechanics (batching, queue, errors).

    Answers ``"answer to <query>"``, records every ``route_batch`` call, refuses the query
    ``"bad"`` like the real router refuses a bad query, and, while ``release`` is clear, holds
    each batch inside ``route_batch`` (so requests pile up behind a running batch). Streams get
    the answer word by word. What the real router computes is tested against the real router.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        threshold: float | None = None,
        metadata: Any = None,
        unit_ids: Sequence[Any] | None = None,
        thresholds: Sequence[float | None] | None = None,
        request_ids: Sequence[str] | None = None,
        streams: Sequence[Any] | None = None,
    ) -> list[RoutedAnswer]:
        self.calls.append(
            {
                "queries": list(queries),
                "thresholds": list(thresholds) if thresholds is not None else None,
                "unit_ids": list(unit_ids) if unit_ids is not None else None,
                "request_ids": list(request_ids) if request_ids is not None else None,
                "streams": [s is not None for s in streams] if streams is not None else None,
            }
        )
        self.entered.set()
        assert self.release.wait(30), "the test never released the batch"
        if "bad" in queries:
            raise InputError("query 'bad' is refused")
        out = []
        for i, q in enumerate(queries):
            answer = f"answer to {q}"
            if streams is not None and streams[i] is not None:
                words = answer.split(" ")
                for j, word in enumerate(words):
                    streams[i](word if j == 0 else " " + word)
            t = thresholds[i] if thresholds is not None else threshold
            out.append(
                RoutedAnswer(
                    query=q,
                    answer=answer,
                    decision=DecisionTrace(
                        retrieve=t is not None and t > 0.5,
                        p_known=0.5,
                        threshold=t,
                        policy="scripted",
                        mode="pre",
                        reason="scripted",
                    ),
                    features={},
                    passages=[],
                    calls={"lm": 1, "retriever": 0},
                    timings_ms={"prefill": 1.0, "total": 1.0},
                    model="scripted-model",
                    request_id=request_ids[i] if request_ids is not None else uuid.uuid4().hex,
                    extra={"unit": unit_ids[i]} if unit_ids is not None else {},
                )
            )
        return out

    def route(self, query: str, **kwargs: Any) -> RoutedAnswer:
        raise AssertionError("the server routes through route_batch")

    def gate(self, query: str, **kwargs: Any) -> Any:
        raise AssertionError("the server does not gate")

    def describe(self) -> dict[str, Any]:
        return {
            "model": "scripted-model",
            "policy": "scripted",
            "gate_mode": "pre",
            "knowledge_base": False,
        }

    def queries_routed(self) -> list[str]:
        return [q for call in self.calls for q in call["queries"]]


@contextmanager
def live_server(app: Any) -> Iterator[tuple[str, Any]]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields (url, server).

    Leaving the block shuts the server down gracefully, as SIGTERM would (uvicorn's signal
    handler only sets ``should_exit``).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
