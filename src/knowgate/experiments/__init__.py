"""A/B testing of gating policies: sticky assignment, a decision log, reports, offline replay.

- :class:`Experiment`: named arms (policies) and weights; units are assigned by hashing
  ``(salt, unit id)`` into 10,000 buckets, so assignment is sticky without any stored state.
- :class:`DecisionLog`: every experiment request and its later outcomes, in SQLite (WAL).
- :func:`build_report`: per-arm rates, accuracy and latency with intervals, significance tests
  and a plain-sentence verdict.
- :func:`replay`: paired comparison of candidate policies on the benchmark's cached
  both-branch results, before they see any traffic.

See docs/experiments.md.
"""

from knowgate.experiments.assignment import BUCKETS, Assignment, bucket_of
from knowgate.experiments.decision_log import DecisionLog, DecisionRow, LoggedDecision, Outcome
from knowgate.experiments.experiment import Experiment, policy_from_spec
from knowgate.experiments.replay import (
    CACHE_FILE,
    BothBranchRecord,
    PolicyOutcome,
    ReplayReport,
    read_both_branches,
    replay,
)
from knowgate.experiments.report import ArmSummary, ExperimentReport, build_report
from knowgate.experiments.statistics import Difference, Estimate

__all__ = [
    "BUCKETS",
    "CACHE_FILE",
    "ArmSummary",
    "Assignment",
    "BothBranchRecord",
    "DecisionLog",
    "DecisionRow",
    "Difference",
    "Estimate",
    "Experiment",
    "ExperimentReport",
    "LoggedDecision",
    "Outcome",
    "PolicyOutcome",
    "ReplayReport",
    "bucket_of",
    "build_report",
    "policy_from_spec",
    "read_both_branches",
    "replay",
]
