"""Signals: pure functions from captured activations and token statistics to named features."""

from knowgate.signals import consistency, sparsity, uncertainty
from knowgate.signals.capture import ForwardCapture, PositionStates, TokenStats
from knowgate.signals.registry import (
    POSITIONS,
    FeatureSpec,
    SignalConfig,
    compute_features,
    feature_names,
    feature_specs,
    register_external_feature,
    register_sparsity_metric,
    register_uncertainty_feature,
    sparsity_by_layer,
    sparsity_table_names,
)

__all__ = [
    "POSITIONS",
    "FeatureSpec",
    "ForwardCapture",
    "PositionStates",
    "SignalConfig",
    "TokenStats",
    "compute_features",
    "consistency",
    "feature_names",
    "feature_specs",
    "register_external_feature",
    "register_sparsity_metric",
    "register_uncertainty_feature",
    "sparsity",
    "sparsity_by_layer",
    "sparsity_table_names",
    "uncertainty",
]
