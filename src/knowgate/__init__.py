"""knowgate: adaptive-retrieval middleware -- retrieve only when the model does not know.

The public API is small: build a :class:`Router` (model + policy + retriever) from a config and
call ``route``; run an A/B test of policies with an :class:`ExperimentRouter` on top of it; put
either into LangChain with :class:`KnowgateRunnable` or :class:`GatedRetriever`. Everything else
is reachable from the subpackages (``models``, ``signals``, ``policy``, ``retrieval``,
``routing``, ``evaluation``, ``experiments``, ``integrations``); docs/architecture.md maps them.

Names are imported lazily (PEP 562), so ``import knowgate`` and ``knowgate --help`` do not pay
for torch, transformers and FAISS until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from knowgate._version import __version__

_EXPORTS: dict[str, str] = {
    "Decision": "knowgate.policy",
    "DecisionLog": "knowgate.experiments",
    "Experiment": "knowgate.experiments",
    "ExperimentRouter": "knowgate.experiments",
    "GatedRetriever": "knowgate.integrations.langchain",
    "KnowgateError": "knowgate.errors",
    "KnowgateRunnable": "knowgate.integrations.langchain",
    "KnowledgeBase": "knowgate.retrieval",
    "KnowledgeBaseConfig": "knowgate.retrieval",
    "LanguageModel": "knowgate.models",
    "ModelConfig": "knowgate.models",
    "Policy": "knowgate.policy",
    "PolicySpec": "knowgate.policy",
    "QueryRouter": "knowgate.routing",
    "RoutedAnswer": "knowgate.routing",
    "Router": "knowgate.routing",
    "RouterConfig": "knowgate.config",
    "SignalConfig": "knowgate.signals",
    "build_policy": "knowgate.policy",
    "compute_features": "knowgate.signals",
    "feature_names": "knowgate.signals",
    "load_config": "knowgate.config",
    "load_model": "knowgate.models",
    "load_policy": "knowgate.policy",
    "policy_from_spec": "knowgate.policy",
    "router_from_config": "knowgate.experiments",
}

__all__ = [
    "Decision",
    "DecisionLog",
    "Experiment",
    "ExperimentRouter",
    "GatedRetriever",
    "KnowgateError",
    "KnowgateRunnable",
    "KnowledgeBase",
    "KnowledgeBaseConfig",
    "LanguageModel",
    "ModelConfig",
    "Policy",
    "PolicySpec",
    "QueryRouter",
    "RoutedAnswer",
    "Router",
    "RouterConfig",
    "SignalConfig",
    "__version__",
    "build_policy",
    "compute_features",
    "feature_names",
    "load_config",
    "load_model",
    "load_policy",
    "policy_from_spec",
    "router_from_config",
]

if TYPE_CHECKING:
    from knowgate.config import RouterConfig, load_config
    from knowgate.errors import KnowgateError
    from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter, router_from_config
    from knowgate.integrations.langchain import GatedRetriever, KnowgateRunnable
    from knowgate.models import LanguageModel, ModelConfig, load_model
    from knowgate.policy import (
        Decision,
        Policy,
        PolicySpec,
        build_policy,
        load_policy,
        policy_from_spec,
    )
    from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig
    from knowgate.routing import QueryRouter, RoutedAnswer, Router
    from knowgate.signals import SignalConfig, compute_features, feature_names


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'knowgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
