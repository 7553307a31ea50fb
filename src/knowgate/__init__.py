"""knowgate: adaptive-retrieval middleware -- retrieve only when the model does not know.

The public API is small: build a :class:`Router` (model + policy + retriever) from a config and
call ``route``; everything else is reachable from the subpackages (``models``, ``signals``,
``policy``, ``retrieval``, ``evaluation``, ``experiments``, ``integrations``).

Names are imported lazily (PEP 562), so ``import knowgate`` and ``knowgate --help`` do not pay
for torch, transformers and FAISS until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Decision": "knowgate.policy",
    "KnowgateError": "knowgate.errors",
    "KnowledgeBase": "knowgate.retrieval",
    "KnowledgeBaseConfig": "knowgate.retrieval",
    "LanguageModel": "knowgate.models",
    "ModelConfig": "knowgate.models",
    "Policy": "knowgate.policy",
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
}

__all__ = [
    "Decision",
    "KnowgateError",
    "KnowledgeBase",
    "KnowledgeBaseConfig",
    "LanguageModel",
    "ModelConfig",
    "Policy",
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
]

if TYPE_CHECKING:
    from knowgate.config import RouterConfig, load_config
    from knowgate.errors import KnowgateError
    from knowgate.models import LanguageModel, ModelConfig, load_model
    from knowgate.policy import Decision, Policy, build_policy, load_policy
    from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig
    from knowgate.routing import RoutedAnswer, Router
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
