"""Gating policies: features in, a retrieve / don't-retrieve :class:`Decision` out.

Pure: policies see feature dictionaries and arrays, never a model or a retriever. Fitted
policies are saved as versioned JSON and loaded with :func:`load_policy`; every policy can be
built by registry name with :func:`build_policy`.
"""

from knowgate.policy.artifact import FORMAT_VERSION
from knowgate.policy.base import Policy
from knowgate.policy.baselines import AlwaysRetrieve, NeverRetrieve, RandomRetrieve
from knowgate.policy.calibration import CALIBRATION_METHODS, fit_calibrator
from knowgate.policy.decision import Decision
from knowgate.policy.fitting import CrossFitted, FusedFit, cross_fitted_p_known, fit_fused
from knowgate.policy.fused import FusedPolicy, LinearScorer
from knowgate.policy.operating_points import (
    ExpectedCost,
    FixedProbability,
    OperatingPoint,
    RetrievalBudget,
    TargetAccuracy,
    ThresholdChoice,
    choose_threshold,
    parse_operating_point,
)
from knowgate.policy.oracle import ORACLE_FEATURE, OraclePolicy
from knowgate.policy.popularity import POPULARITY_FEATURE, PopularityPolicy
from knowgate.policy.registry import (
    POLICY_REGISTRY,
    build_policy,
    load_policy,
    policy_from_artifact,
)
from knowgate.policy.threshold import ThresholdPolicy

__all__ = [
    "CALIBRATION_METHODS",
    "FORMAT_VERSION",
    "ORACLE_FEATURE",
    "POLICY_REGISTRY",
    "POPULARITY_FEATURE",
    "AlwaysRetrieve",
    "CrossFitted",
    "Decision",
    "ExpectedCost",
    "FixedProbability",
    "FusedFit",
    "FusedPolicy",
    "LinearScorer",
    "NeverRetrieve",
    "OperatingPoint",
    "OraclePolicy",
    "Policy",
    "PopularityPolicy",
    "RandomRetrieve",
    "RetrievalBudget",
    "TargetAccuracy",
    "ThresholdChoice",
    "ThresholdPolicy",
    "build_policy",
    "choose_threshold",
    "cross_fitted_p_known",
    "fit_calibrator",
    "fit_fused",
    "load_policy",
    "parse_operating_point",
    "policy_from_artifact",
]
