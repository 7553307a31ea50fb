"""Models: load any causal LM and run it with capture hooks (one pass, every signal)."""

from knowgate.models.architecture import BlockLayout, discover_layout
from knowgate.models.config import (
    DEFAULT_MODEL,
    FewShotExample,
    GenerationConfig,
    ModelConfig,
    PromptConfig,
)
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
    "resolve_source",
    "summarize_logits",
]
