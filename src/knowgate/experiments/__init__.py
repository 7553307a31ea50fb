"""A/B testing of gating policies: sticky assignment, a decision log, reports, offline replay.

- :class:`Experiment`: named arms (policies) and weights; units are assigned by hashing
  ``(salt, unit id)`` into 10,000 buckets, so assignment is sticky without any stored state.
- :class:`ExperimentRouter`: the experiment on top of a router - each request's unit picks its
  arm's policy, and the request is logged; :func:`router_from_config` builds it (or a plain
  router) from a config.
- :class:`DecisionLog`: every experiment request and its later outcomes, in SQLite (WAL).
- :func:`build_report`: per-arm rates, accuracy and latency with intervals, significance tests
  and a plain-sentence verdict.
- :func:`replay`: paired comparison of candidate policies on the benchmark's cached
  both-branch results, before they see any traffic.

See docs/experiments.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knowgate.experiments.assignment import BUCKETS, Assignment, bucket_of
from knowgate.experiments.decision_log import DecisionLog, DecisionRow, LoggedDecision, Outcome
from knowgate.experiments.experiment import Experiment
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
    "ExperimentRouter",
    "LoggedDecision",
    "Outcome",
    "PolicyOutcome",
    "ReplayReport",
    "bucket_of",
    "build_report",
    "read_both_branches",
    "replay",
    "router_from_config",
]

if TYPE_CHECKING:
    from knowgate.experiments.experiment_router import ExperimentRouter, router_from_config

# The experiment router needs the model stack (torch); reports, feedback and replay do not, so
# it is imported on first use (PEP 562).
_LAZY = {"ExperimentRouter", "router_from_config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from knowgate.experiments import experiment_router

        value = getattr(experiment_router, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
