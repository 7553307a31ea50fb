"""Re-timing the closed-book stages, so every branch's cost is measured under one condition.

Closed-book caches are reused across runs (and across weeks), but their timings belong to the run
that wrote them: another thread count, other jobs on the machine, and a prefill that captured
three prompt positions for the study where the router captures one. The retrieval branch is
timed in the benchmark run itself. To put the closed-book stages on the same footing, the first
few questions of each dataset are run again, now, as the router runs them - a prefill with the
router's signal configuration, the signals, the greedy decode - and every cached prefill and
decode time of the dataset is scaled by ``fresh / cached`` on those questions (per-question
variation - answer lengths within a batch - is kept; the level is re-measured). Computing the
signals is not part of the cached prefill time, so its mean per question is measured here and
added to every gated request of the dataset. The re-run answers are compared with the cached
ones as a consistency check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from knowgate.errors import DataError
from knowgate.evaluation.branches.closed_book import ClosedBookRecord

if TYPE_CHECKING:
    from knowgate.models import LanguageModel
    from knowgate.signals import SignalConfig

DEFAULT_SAMPLE = 40


@dataclass(frozen=True)
class ClosedBookTiming:
    """Fresh against cached closed-book stage times on a dataset's first questions.

    All seconds are per question (a question's share of its batch).

    Attributes:
        dataset: the dataset's name.
        questions: questions re-run.
        cached_prefill_seconds: their mean prefill time in the cache.
        fresh_prefill_seconds: the same, measured now (the router's capture configuration).
        prefill_factor: ``fresh / cached`` prefill, applied to every cached prefill time.
        cached_decode_seconds: their mean decode time in the cache.
        fresh_decode_seconds: the same, measured now (batched like the cache).
        decode_factor: ``fresh / cached`` decode, applied to every cached decode time.
        signals_seconds: mean time to compute the router's signals from a capture.
        answers_agree: share of re-run answers identical to the cached ones.
        wall_seconds: wall time of the re-run.
    """

    dataset: str
    questions: int
    cached_prefill_seconds: float
    fresh_prefill_seconds: float
    prefill_factor: float
    cached_decode_seconds: float
    fresh_decode_seconds: float
    decode_factor: float
    signals_seconds: float
    answers_agree: float
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _factor(fresh: float, cached: float) -> float:
    return fresh / cached if cached > 0 else 1.0


def time_closed_book_stages(
    lm: LanguageModel,
    records: Sequence[ClosedBookRecord],
    *,
    sample: int = DEFAULT_SAMPLE,
    batch_size: int | None = None,
    signals: SignalConfig | None = None,
) -> ClosedBookTiming:
    """Run the first ``sample`` questions of ``records`` (one dataset) again, timed, and compare.

    Args:
        lm: the model that wrote the records.
        records: closed-book records of one dataset.
        sample: questions to re-run.
        batch_size: questions per pass (default from the model config, as the cache was run).
        signals: the signal configuration a gate computes (default: the router's default).

    Raises:
        DataError: no records, or records of several datasets.
    """
    from knowgate.signals import SignalConfig, compute_features

    if not records:
        raise DataError("no closed-book records to time")
    names = {r.dataset for r in records}
    if len(names) != 1:
        raise DataError(f"time one dataset at a time, got {sorted(names)}")
    config = signals or SignalConfig()
    chosen = list(records[: max(1, sample)])
    size = batch_size or lm.config.generation.batch_size
    lm.stop_token_ids()  # one-time setup, not part of a request's cost
    prefill = decode = signal_seconds = 0.0
    agree = 0
    start = time.perf_counter()
    for i in range(0, len(chosen), size):
        chunk = chosen[i : i + size]
        outs = lm.run([lm.format_prompt(r.example.question) for r in chunk], batch_size=len(chunk))
        prefill += outs[0].prefill_seconds  # shared by the batch
        decode += outs[0].draft.seconds
        t = time.perf_counter()
        for out in outs:
            compute_features(out.capture, config)
        signal_seconds += time.perf_counter() - t
        agree += sum(o.answer == r.answer for o, r in zip(outs, chunk, strict=True))
    wall = time.perf_counter() - start
    n = len(chosen)
    cached_prefill = sum(r.prefill_seconds / max(1, r.batch_size) for r in chosen) / n
    cached_decode = sum(r.decode_seconds / max(1, r.batch_size) for r in chosen) / n
    return ClosedBookTiming(
        dataset=next(iter(names)),
        questions=n,
        cached_prefill_seconds=cached_prefill,
        fresh_prefill_seconds=prefill / n,
        prefill_factor=_factor(prefill / n, cached_prefill),
        cached_decode_seconds=cached_decode,
        fresh_decode_seconds=decode / n,
        decode_factor=_factor(decode / n, cached_decode),
        signals_seconds=signal_seconds / n,
        answers_agree=agree / n,
        wall_seconds=wall,
    )
