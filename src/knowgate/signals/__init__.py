"""Signals: pure functions from captured activations and token statistics to named features."""

from knowgate.signals import sparsity, uncertainty
from knowgate.signals.capture import ForwardCapture, TokenStats
from knowgate.signals.registry import (
    FeatureSpec,
    SignalConfig,
    compute_features,
    feature_names,
    feature_specs,
    register_sparsity_metric,
    register_uncertainty_feature,
)

__all__ = [
    "FeatureSpec",
    "ForwardCapture",
    "SignalConfig",
    "TokenStats",
    "compute_features",
    "feature_names",
    "feature_specs",
    "register_sparsity_metric",
    "register_uncertainty_feature",
    "sparsity",
    "uncertainty",
]
