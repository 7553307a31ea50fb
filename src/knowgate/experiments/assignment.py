"""Sticky, stateless assignment of units (users, sessions) to experiment arms.

A unit's bucket is ``SHA-256(salt + "." + unit_id)``, its first 8 bytes read as a big-endian
integer, modulo 10,000: the construction of Statsig's SDKs; GrowthBook and Optimizely hash into
10,000 buckets the same way (with FNV-1a / MurmurHash3). Each arm owns a contiguous range of
buckets proportional to its weight. Nothing is stored: any process, on any machine, before or
after a restart, computes the same arm for the same (salt, unit id), and Python's per-process
``hash()`` randomisation plays no part.

Changing the salt reshuffles every unit (a fresh experiment); keeping the salt while changing
weights moves only the units whose buckets change owner.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from knowgate.errors import ExperimentError

BUCKETS = 10_000
MAX_UNIT_ID_CHARS = 512

UnitIdSource = Literal["given", "random"]


def bucket_of(salt: str, unit_id: str, buckets: int = BUCKETS) -> int:
    """The bucket (``0 .. buckets-1``) of ``unit_id`` under ``salt``; pure and stable."""
    digest = hashlib.sha256(f"{salt}.{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def normalize_unit_id(unit_id: Any) -> str:
    """A unit id as the string that is hashed: strings as given, integers in decimal.

    Raises:
        ExperimentError: not a string or integer, empty, or longer than 512 characters.
    """
    if isinstance(unit_id, bool) or not isinstance(unit_id, str | numbers.Integral):
        raise ExperimentError(
            f"unit id must be a string or an integer, got {type(unit_id).__name__}"
        )
    text = unit_id if isinstance(unit_id, str) else str(int(unit_id))
    if not text.strip():
        raise ExperimentError("unit id is empty")
    if len(text) > MAX_UNIT_ID_CHARS:
        raise ExperimentError(
            f"unit id is {len(text)} characters; the limit is {MAX_UNIT_ID_CHARS}"
        )
    return text


def random_unit_id() -> str:
    """A fresh unit id for requests that come without one (recorded as ``random``)."""
    return f"anon-{uuid.uuid4().hex}"


def bucket_ranges(
    arms: Sequence[str], weights: Sequence[float], buckets: int = BUCKETS
) -> dict[str, tuple[int, int]]:
    """Contiguous ``[start, stop)`` bucket ranges, one per arm, proportional to ``weights``.

    Boundaries are the rounded cumulative weights, so ranges always cover every bucket exactly.

    Raises:
        ExperimentError: weights not positive and finite, lengths differ, or an arm's weight is
            too small to own a single bucket.
    """
    if len(arms) != len(weights):
        raise ExperimentError(f"{len(weights)} weights for {len(arms)} arms")
    values: list[float] = []
    for arm, w in zip(arms, weights, strict=True):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ExperimentError(f"weight of arm {arm!r} must be a number, got {w!r}")
        if not math.isfinite(float(w)) or float(w) <= 0:
            raise ExperimentError(f"weight of arm {arm!r} must be positive and finite, got {w}")
        values.append(float(w))
    total = math.fsum(values)
    ranges: dict[str, tuple[int, int]] = {}
    start = 0
    cumulative = 0.0
    for i, (arm, w) in enumerate(zip(arms, values, strict=True)):
        cumulative += w
        stop = buckets if i == len(arms) - 1 else round(cumulative / total * buckets)
        if stop <= start:
            raise ExperimentError(
                f"arm {arm!r} has weight {w / total:.2e} of the traffic, less than one of "
                f"{buckets} buckets"
            )
        ranges[arm] = (start, stop)
        start = stop
    return ranges


def arm_for_bucket(ranges: Mapping[str, tuple[int, int]], bucket: int) -> str:
    """The arm whose range holds ``bucket``."""
    for arm, (start, stop) in ranges.items():
        if start <= bucket < stop:
            return arm
    raise ExperimentError(f"bucket {bucket} is outside every arm's range")  # pragma: no cover


@dataclass(frozen=True)
class Assignment:
    """Which arm one unit is in, and how that was decided.

    Attributes:
        experiment: the experiment's name.
        arm: the arm.
        unit_id: the hashed unit id (a random ``anon-...`` id when none was given).
        unit_id_source: ``given`` or ``random``.
        bucket: the unit's bucket, ``0 .. 9999``.
        config_hash: the experiment definition's hash (see :class:`Experiment`).
        policy_id: the arm's policy id.
    """

    experiment: str
    arm: str
    unit_id: str
    unit_id_source: UnitIdSource
    bucket: int
    config_hash: str
    policy_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what an ExperimentRouter puts into ``extra["experiment"]``)."""
        return {
            "name": self.experiment,
            "arm": self.arm,
            "unit_id": self.unit_id,
            "unit_id_source": self.unit_id_source,
            "bucket": self.bucket,
            "config_hash": self.config_hash,
            "policy_id": self.policy_id,
        }
