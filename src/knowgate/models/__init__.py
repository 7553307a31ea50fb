"""Models: load any causal LM and run it with capture hooks (one pass, every signal).

Names are imported lazily so that light modules (configs, the CLI's ``--help``) do not import
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "DEFAULT_MODEL": "knowgate.models.config",
    "FewShotExample": "knowgate.models.config",
    "GenerationConfig": "knowgate.models.config",
    "ModelConfig": "knowgate.models.config",
    "PromptConfig": "knowgate.models.config",
    "PACKAGED_MODELS": "knowgate.models.packaged",
    "PackagedModel": "knowgate.models.packaged",
    "resolve_source": "knowgate.models.loading",
    "model_fingerprint": "knowgate.models.fingerprint",
    "BlockLayout": "knowgate.models.architecture",
    "discover_layout": "knowgate.models.architecture",
    "Draft": "knowgate.models.language_model",
    "LanguageModel": "knowgate.models.language_model",
    "Prefill": "knowgate.models.language_model",
    "RunOutput": "knowgate.models.language_model",
    "load_model": "knowgate.models.language_model",
    "summarize_logits": "knowgate.models.language_model",
}

__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "BlockLayout",
    "Draft",
    "FewShotExample",
    "GenerationConfig",
    "LanguageModel",
    "ModelConfig",
    "PackagedModel",
    "Prefill",
    "PromptConfig",
    "RunOutput",
    "discover_layout",
    "load_model",
    "model_fingerprint",
    "resolve_source",
    "summarize_logits",
]

if TYPE_CHECKING:
    from knowgate.models.architecture import BlockLayout, discover_layout
    from knowgate.models.config import (
        DEFAULT_MODEL,
        FewShotExample,
        GenerationConfig,
        ModelConfig,
        PromptConfig,
    )
    from knowgate.models.fingerprint import model_fingerprint
    from knowgate.models.language_model import (
        Draft,
        LanguageModel,
        Prefill,
        RunOutput,
        load_model,
        summarize_logits,
    )
    from knowgate.models.loading import resolve_source
    from knowgate.models.packaged import PACKAGED_MODELS, PackagedModel


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'knowgate.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
