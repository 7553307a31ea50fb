"""Signals: pure functions from captured activations and token statistics to named features."""

from knowgate.signals import consistency, sparsity, topk, uncertainty
from knowgate.signals.capture import (
    ForwardCapture,
    PositionStates,
    TokenProbabilities,
    TokenStats,
    TopKStats,
)
from knowgate.signals.registry import (
    POSITIONS,
    FeatureSpec,
    SignalConfig,
    compute_features,
    compute_served_features,
    feature_names,
    feature_specs,
    register_external_feature,
    register_sparsity_metric,
    register_uncertainty_feature,
    served_hidden_feature_names,
    sparsity_by_layer,
    sparsity_table_names,
)

__all__ = [
    "POSITIONS",
    "FeatureSpec",
    "ForwardCapture",
    "PositionStates",
    "SignalConfig",
    "TokenProbabilities",
    "TokenStats",
    "TopKStats",
    "compute_features",
    "compute_served_features",
    "consistency",
    "feature_names",
    "feature_specs",
    "register_external_feature",
    "register_sparsity_metric",
    "register_uncertainty_feature",
    "served_hidden_feature_names",
    "sparsity",
    "sparsity_by_layer",
    "sparsity_table_names",
    "topk",
    "uncertainty",
]
