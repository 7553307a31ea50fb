"""Pick the backend a model config names: a model loaded here, or one behind a server.

A local :class:`~knowgate.models.LanguageModel` reads every signal from its own forward pass and
can gate before generating; a :class:`~knowgate.models.remote.RemoteModel` is gated on one greedy
draft with the probabilities its server returns. Both carry ``model_id`` and ``config``; the
router and the closed-book branch choose their path by type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from knowgate.models.config import DEFAULT_MODEL, ModelConfig
from knowgate.models.remote import RemoteModel

if TYPE_CHECKING:
    from knowgate.models.language_model import LanguageModel

ModelBackend: TypeAlias = "LanguageModel | RemoteModel"


def is_remote(source: str | ModelConfig) -> bool:
    """Whether ``source`` names a served model (``openai:...`` or a ``remote`` section)."""
    config = source if isinstance(source, ModelConfig) else ModelConfig(source=source)
    return config.remote is not None


def load_backend(source: str | ModelConfig = DEFAULT_MODEL) -> ModelBackend:
    """Load a local model, or connect to a served one (``openai:<base_url>#<model>``).

    A served model is not contacted here; its first request (or :meth:`RemoteModel.identity`)
    is.
    """
    config = source if isinstance(source, ModelConfig) else ModelConfig(source=source)
    if config.remote is not None:
        return RemoteModel(config)
    from knowgate.models.language_model import LanguageModel

    return LanguageModel.load(config)
