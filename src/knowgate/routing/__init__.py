"""Routing: compose model, policy and retriever into answers with a full trace."""

from knowgate.routing.retrievers import PassageSource, as_passage_source
from knowgate.routing.router import GateResult, Router, bundled_policy_path, resolve_policy
from knowgate.routing.trace import DecisionTrace, PassageTrace, RoutedAnswer

__all__ = [
    "DecisionTrace",
    "GateResult",
    "PassageSource",
    "PassageTrace",
    "RoutedAnswer",
    "Router",
    "as_passage_source",
    "bundled_policy_path",
    "resolve_policy",
]
