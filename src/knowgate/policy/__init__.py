"""Gating policies: features in, a retrieve / don't-retrieve :class:`Decision` out.

Pure: policies see feature dictionaries and arrays, never a model or a retriever. A policy comes
from a :class:`PolicySpec` through :func:`policy_from_spec` (a saved artifact, a registry name
with parameters, or the policy bundled for the model); :func:`build_policy` (by name) and
:func:`load_policy` (from a file) are its shorthands. Fitted policies are saved as versioned
JSON (``policy.save``).
"""

from knowgate.policy.artifact import FORMAT_VERSION
from knowgate.policy.base import NoParams, Policy
from knowgate.policy.baselines import AlwaysRetrieve, NeverRetrieve, RandomRetrieve
from knowgate.policy.calibration import CALIBRATION_METHODS, fit_calibrator
from knowgate.policy.decision import Decision
from knowgate.policy.fitting import FusedFit, PolicyFit, fit_fused, fit_policy
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
from knowgate.policy.peers import (
    FlarePolicy,
    SamplingConsistencyPolicy,
    SelfRoutingPolicy,
    TargPolicy,
)
from knowgate.policy.popularity import POPULARITY_FEATURE, PopularityPolicy
from knowgate.policy.probe import ProbePolicy, VectorScorer
from knowgate.policy.registry import (
    POLICY_REGISTRY,
    build_policy,
    bundled_policy_path,
    load_policy,
    policy_from_artifact,
    policy_from_spec,
)
from knowgate.policy.selection import (
    FeatureGroups,
    HiddenStateProbe,
    Logistic,
    Recipe,
    StackedProbe,
)
from knowgate.policy.spec import PolicySpec
from knowgate.policy.threshold import ThresholdPolicy

__all__ = [
    "CALIBRATION_METHODS",
    "FORMAT_VERSION",
    "ORACLE_FEATURE",
    "POLICY_REGISTRY",
    "POPULARITY_FEATURE",
    "AlwaysRetrieve",
    "Decision",
    "ExpectedCost",
    "FeatureGroups",
    "FixedProbability",
    "FlarePolicy",
    "FusedFit",
    "FusedPolicy",
    "HiddenStateProbe",
    "LinearScorer",
    "Logistic",
    "NeverRetrieve",
    "NoParams",
    "OperatingPoint",
    "OraclePolicy",
    "Policy",
    "PolicyFit",
    "PolicySpec",
    "PopularityPolicy",
    "ProbePolicy",
    "RandomRetrieve",
    "Recipe",
    "RetrievalBudget",
    "SamplingConsistencyPolicy",
    "SelfRoutingPolicy",
    "StackedProbe",
    "TargPolicy",
    "TargetAccuracy",
    "ThresholdChoice",
    "ThresholdPolicy",
    "VectorScorer",
    "build_policy",
    "bundled_policy_path",
    "choose_threshold",
    "fit_calibrator",
    "fit_fused",
    "fit_policy",
    "load_policy",
    "parse_operating_point",
    "policy_from_artifact",
    "policy_from_spec",
]
