"""The one interface the integrations route through: a Router, or an ExperimentRouter on top.

The HTTP app and the LangChain adapters take any :class:`QueryRouter`, so they serve plain
routing and A/B experiments alike, and never need to know which one they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from knowgate.routing.trace import GateResult, RoutedAnswer

TextSink = Callable[[str], None]
"""Receives a streamed answer's text, piece by piece, as the model decodes it.

The pieces concatenate to a prefix of the final ``RoutedAnswer.answer`` (the rest arrives with
it: answers that were not decoded token by token - a draft-gate answer, an external generator's
- arrive whole). A sink is called from the thread that runs the model; keep it fast.
"""


@runtime_checkable
class QueryRouter(Protocol):
    """Routes queries: answers them (retrieving when needed), or only gates them.

    ``unit_id`` names who asks (a user, a session). A plain
    :class:`~knowgate.routing.Router` answers everyone alike and ignores it; an
    :class:`~knowgate.experiments.ExperimentRouter` picks the request's arm by it.
    """

    def route(
        self,
        query: str,
        *,
        threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        unit_id: str | int | None = None,
    ) -> RoutedAnswer:
        """Answer one query (see :meth:`knowgate.routing.Router.route`)."""
        ...

    def route_batch(
        self,
        queries: Sequence[str],
        *,
        threshold: float | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        unit_ids: Sequence[str | int | None] | None = None,
        thresholds: Sequence[float | None] | None = None,
        request_ids: Sequence[str] | None = None,
        streams: Sequence[TextSink | None] | None = None,
    ) -> list[RoutedAnswer]:
        """Answer many queries in batches (see :meth:`knowgate.routing.Router.route_batch`).

        Every per-query argument lets requests from different callers share one batch (a
        server's micro-batches): each keeps its own threshold, unit, request id and stream.
        """
        ...

    def gate(
        self,
        query: str,
        *,
        threshold: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        unit_id: str | int | None = None,
    ) -> GateResult:
        """Decide for one query without answering it (see :meth:`knowgate.routing.Router.gate`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What serves the requests, JSON-able: model, policy, gate mode, knowledge base, ..."""
        ...
