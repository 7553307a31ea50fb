"""knowgate: adaptive-retrieval middleware -- retrieve only when the model does not know."""

from knowgate.errors import KnowgateError
from knowgate.models import LanguageModel, ModelConfig, load_model
from knowgate.signals import SignalConfig, compute_features, feature_names

__version__ = "0.1.0"

__all__ = [
    "KnowgateError",
    "LanguageModel",
    "ModelConfig",
    "SignalConfig",
    "__version__",
    "compute_features",
    "feature_names",
    "load_model",
]
