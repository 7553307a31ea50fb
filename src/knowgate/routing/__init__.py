"""Routing: compose model, policy and retriever into answers with a full trace."""

from knowgate.routing.generator import AnswerGenerator, GenerationRequest
from knowgate.routing.protocol import QueryRouter, TextSink
from knowgate.routing.retrievers import PassageSource, as_passage_source, finite_score
from knowgate.routing.router import Router, load_knowledge_base
from knowgate.routing.trace import DecisionTrace, GateResult, PassageTrace, RoutedAnswer

__all__ = [
    "AnswerGenerator",
    "DecisionTrace",
    "GateResult",
    "GenerationRequest",
    "PassageSource",
    "PassageTrace",
    "QueryRouter",
    "RoutedAnswer",
    "Router",
    "TextSink",
    "as_passage_source",
    "finite_score",
    "load_knowledge_base",
]
