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
    "RemoteConfig": "knowgate.models.config",
    "ModelBackend": "knowgate.models.backend",
    "is_remote": "knowgate.models.backend",
    "load_backend": "knowgate.models.backend",
    "RemoteAnswer": "knowgate.models.remote",
    "RemoteDraft": "knowgate.models.remote",
    "RemoteModel": "knowgate.models.remote",
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
    "TokenCallback": "knowgate.models.language_model",
    "AnswerStream": "knowgate.models.streaming",
    "load_model": "knowgate.models.language_model",
    "summarize_logits": "knowgate.models.language_model",
}

__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "AnswerStream",
    "BlockLayout",
    "Draft",
    "FewShotExample",
    "GenerationConfig",
    "LanguageModel",
    "ModelBackend",
    "ModelConfig",
    "PackagedModel",
    "Prefill",
    "PromptConfig",
    "RemoteAnswer",
    "RemoteConfig",
    "RemoteDraft",
    "RemoteModel",
    "RunOutput",
    "TokenCallback",
    "discover_layout",
    "is_remote",
    "load_backend",
    "load_model",
    "model_fingerprint",
    "resolve_source",
    "summarize_logits",
]

if TYPE_CHECKING:
    from knowgate.models.architecture import BlockLayout, discover_layout
    from knowgate.models.backend import ModelBackend, is_remote, load_backend
    from knowgate.models.config import (
        DEFAULT_MODEL,
        FewShotExample,
        GenerationConfig,
        ModelConfig,
        PromptConfig,
        RemoteConfig,
    )
    from knowgate.models.fingerprint import model_fingerprint
    from knowgate.models.language_model import (
        Draft,
        LanguageModel,
        Prefill,
        RunOutput,
        TokenCallback,
        load_model,
        summarize_logits,
    )
    from knowgate.models.loading import resolve_source
    from knowgate.models.packaged import PACKAGED_MODELS, PackagedModel
    from knowgate.models.remote import RemoteAnswer, RemoteDraft, RemoteModel
    from knowgate.models.streaming import AnswerStream


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'knowgate.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
