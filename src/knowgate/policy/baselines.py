"""Baseline policies every fitted policy is compared with: always, never, random at a rate."""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from knowgate.errors import PolicyError
from knowgate.policy.base import Policy, check_threshold
from knowgate.policy.decision import Decision
from knowgate.schema import StrictModel


class AlwaysRetrieve(Policy):
    """Retrieve for every request (classic RAG)."""

    name = "always"

    @property
    def policy_id(self) -> str:  # noqa: D102
        return "always"

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        return [Decision(True, None, None, "always", "always retrieve")] * x.shape[0]


class NeverRetrieve(Policy):
    """Never retrieve (closed-book LLM)."""

    name = "never"

    @property
    def policy_id(self) -> str:  # noqa: D102
        return "never"

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        return [Decision(False, None, None, "never", "never retrieve")] * x.shape[0]


class RandomParams(StrictModel):
    """Parameters of the random policy (ranges are checked by the policy, with their names)."""

    rate: float = Field(default=0.5, strict=True)
    seed: int = Field(default=0, strict=True)


class RandomRetrieve(Policy):
    """Retrieve for a random share ``rate`` of requests: the baseline at equal retrieval rate.

    Draws come from a seeded generator behind a lock, so a run is reproducible and the policy is
    safe to share between threads. ``threshold`` is the rate (``with_threshold`` changes it).
    """

    name = "random"
    params_model = RandomParams

    def __init__(self, rate: float = 0.5, seed: int = 0) -> None:
        """Create the policy; ``rate`` is the probability of retrieving, in [0, 1]."""
        self.rate = check_threshold(rate, low=0.0, high=1.0, what="random policy rate")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise PolicyError(f"random policy seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.threshold = self.rate
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    @property
    def policy_id(self) -> str:  # noqa: D102
        return f"random:rate={self.rate:g}:seed={self.seed}"

    def with_threshold(self, threshold: float) -> RandomRetrieve:
        """Same seed, another retrieval rate."""
        return RandomRetrieve(threshold, self.seed)

    def _decide_matrix(self, x: NDArray[np.float64]) -> list[Decision]:
        with self._lock:
            draws = np.asarray(self._rng.random(x.shape[0]), dtype=np.float64)
        pid = self.policy_id
        return [
            Decision(
                bool(u < self.rate),
                None,
                self.rate,
                pid,
                f"random draw {u:.3f} {'<' if u < self.rate else '>='} rate {self.rate:g}",
            )
            for u in draws.tolist()
        ]
