"""What a routed request returns: the answer and the trace of how it was obtained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PassageTrace:
    """A passage that was put into the prompt.

    Attributes:
        id: document id.
        title: document title.
        text: the passage text (as retrieved, before prompt truncation).
        score: retriever score (scale depends on the retriever); ``None`` when it gives none.
        rank: 1-based rank.
    """

    id: str
    title: str
    text: str
    score: float | None
    rank: int


@dataclass(frozen=True)
class DecisionTrace:
    """The gate's decision.

    Attributes:
        retrieve: whether the retriever was asked (the policy judged the model not to know).
        p_known: calibrated probability that the closed-book answer is correct; ``None`` for
            policies without one (always, never, random).
        threshold: p_known below this retrieves.
        policy: the policy id.
        mode: ``pre`` or ``draft``.
        reason: the policy's one-line explanation.
    """

    retrieve: bool
    p_known: float | None
    threshold: float | None
    policy: str
    mode: str
    reason: str


@dataclass
class RoutedAnswer:
    """The answer to one query plus everything needed to audit it.

    Attributes:
        query: the query as received.
        answer: the final answer text.
        decision: what the gate decided and why.
        features: every signal the gate computed (name -> value).
        passages: passages put into the prompt (empty when answered closed-book).
        calls: ``lm`` (local model forward-pass calls: 1 when answered closed-book, 2 when
            retrieving), ``retriever`` (0 or 1), and ``generator`` when an external generator
            answered.
        timings_ms: wall time per stage (``prefill``, ``signals``, ``decode``, ``policy``,
            ``retrieve``, ``answer_with_passages`` or ``generate``) and their sum, ``total``. In
            ``route_batch`` a request's share of a batched stage is the stage's wall time divided
            by the number of requests that took part in it.
        model: id of the local (gating) model.
        request_id: unique id of the request.
        retrieval_error: why retrieval was wanted but not used (retriever raised, or none is
            configured); the answer then fell back to closed-book.
        extra: additions by the layers above the router (an ExperimentRouter puts the
            request's arm under ``"experiment"``).
    """

    query: str
    answer: str
    decision: DecisionTrace
    features: dict[str, float]
    passages: list[PassageTrace]
    calls: dict[str, int]
    timings_ms: dict[str, float]
    model: str
    request_id: str
    retrieval_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def retrieved(self) -> bool:
        """Whether passages were used for the answer."""
        return bool(self.passages)

    def to_dict(self, *, passage_text: bool = False) -> dict[str, Any]:
        """JSON-able form; the shape of ``knowgate ask --json``."""
        passages = [
            {k: v for k, v in asdict(p).items() if passage_text or k != "text"}
            for p in self.passages
        ]
        out: dict[str, Any] = {
            "answer": self.answer,
            "decision": asdict(self.decision),
            "features": self.features,
            "passages": passages,
            "calls": self.calls,
            "timings_ms": self.timings_ms,
            "model": self.model,
            "query": self.query,
            "request_id": self.request_id,
            "retrieval_error": self.retrieval_error,
        }
        if self.extra:
            out["extra"] = self.extra
        return out


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict for one query, without generating an answer.

    Attributes:
        decision: what the gate decided and why.
        features: every signal the gate computed.
        timings_ms: ``gate``, the wall time of the decision (prefill, and the draft in draft mode).
        model: id of the local (gating) model.
        extra: additions by the layers above the router (an ExperimentRouter puts the
            request's arm under ``"experiment"``).
    """

    decision: DecisionTrace
    features: dict[str, float]
    timings_ms: dict[str, float]
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
