"""Signals: pure functions from captured activations and token statistics to named features."""

from knowgate.signals import consistency, sparsity, uncertainty
from knowgate.signals.capture import ForwardCapture, PositionStates, TokenStats
from knowgate.signals.registry import (
    POSITIONS,
    FeatureSpec,
    SignalConfig,
    VectorSignal,
    compute_features,
    compute_vectors,
    draft_features,
    feature_names,
    feature_specs,
    is_vector_signal,
    parse_vector_signal,
    register_external_feature,
    register_sparsity_metric,
    register_uncertainty_feature,
    sparsity_by_layer,
    sparsity_table_names,
    vector_signal_name,
)

__all__ = [
    "POSITIONS",
    "FeatureSpec",
    "ForwardCapture",
    "PositionStates",
    "SignalConfig",
    "TokenStats",
    "VectorSignal",
    "compute_features",
    "compute_vectors",
    "consistency",
    "draft_features",
    "feature_names",
    "feature_specs",
    "is_vector_signal",
    "parse_vector_signal",
    "register_external_feature",
    "register_sparsity_metric",
    "register_uncertainty_feature",
    "sparsity",
    "sparsity_by_layer",
    "sparsity_table_names",
    "uncertainty",
    "vector_signal_name",
]
