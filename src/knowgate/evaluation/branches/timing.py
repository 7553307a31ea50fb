"""Re-timing the closed-book decode, so both branches' costs are measured under one condition.

Closed-book caches are reused across runs (and across weeks), but their timings belong to the run
that wrote them: another thread count, other jobs on the machine. The retrieval branch is timed
in the benchmark run itself. To put the closed-book decode on the same footing, the first few
questions of each dataset are decoded again, now, and every cached decode time of the dataset is
scaled by ``fresh / cached`` on those questions (per-question variation - answer lengths within
a batch - is kept; the level is re-measured). The re-run answers are compared with the cached
ones as a consistency check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from knowgate.errors import DataError
from knowgate.evaluation.closed_book import ClosedBookRecord

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

DEFAULT_SAMPLE = 40


@dataclass(frozen=True)
class DecodeTiming:
    """Fresh against cached closed-book decode time on a dataset's first questions.

    Attributes:
        dataset: the dataset's name.
        questions: questions re-run.
        cached_seconds: their mean decode seconds per question in the cache.
        fresh_seconds: the same, measured now (batched like the cache).
        factor: ``fresh / cached``, applied to every cached decode time of the dataset.
        answers_agree: share of re-run answers identical to the cached ones.
        wall_seconds: wall time of the re-run (prefill + decode).
    """

    dataset: str
    questions: int
    cached_seconds: float
    fresh_seconds: float
    factor: float
    answers_agree: float
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}


def time_closed_book_decode(
    lm: LanguageModel,
    records: Sequence[ClosedBookRecord],
    *,
    sample: int = DEFAULT_SAMPLE,
    batch_size: int | None = None,
) -> DecodeTiming:
    """Decode the first ``sample`` questions of ``records`` (one dataset) again and compare.

    Raises:
        DataError: no records, or records of several datasets.
    """
    if not records:
        raise DataError("no closed-book records to time")
    names = {r.dataset for r in records}
    if len(names) != 1:
        raise DataError(f"time one dataset at a time, got {sorted(names)}")
    chosen = list(records[: max(1, sample)])
    size = batch_size or lm.config.generation.batch_size
    lm.stop_token_ids()  # one-time setup, not part of a request's cost
    decode = 0.0
    agree = 0
    start = time.perf_counter()
    for i in range(0, len(chosen), size):
        chunk = chosen[i : i + size]
        outs = lm.run([lm.format_prompt(r.example.question) for r in chunk], batch_size=len(chunk))
        decode += outs[0].draft.seconds  # shared by the batch
        agree += sum(o.answer == r.answer for o, r in zip(outs, chunk, strict=True))
    wall = time.perf_counter() - start
    cached = sum(r.decode_seconds / max(1, r.batch_size) for r in chosen) / len(chosen)
    fresh = decode / len(chosen)
    return DecodeTiming(
        dataset=next(iter(names)),
        questions=len(chosen),
        cached_seconds=cached,
        fresh_seconds=fresh,
        factor=fresh / cached if cached > 0 else 1.0,
        answers_agree=agree / len(chosen),
        wall_seconds=wall,
    )
