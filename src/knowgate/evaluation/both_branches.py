"""The both-branch table: its file schema, writer and reader, and the one outcome rule.

With a question's closed-book answer and its answer with retrieval both known, any gating
policy's outcome on it is known exactly, offline: **the retrieval answer if the policy
retrieved, else the closed-book answer** - its correctness, its retrieval calls, its LM calls
and its latency. :func:`policy_outcome` is that rule, and both the benchmark and the offline
replay (``knowgate ab replay``) score policies with it.

Latency is built from the stages measured per question (a question's share of each batched
stage, as timed in the runs; see :class:`StageSeconds`), the way the router serves the request:

- a gate that reads signals before generation (``stage="prefill"``): closed-book prefill +
  signals, then either the closed-book decode (the gate answers from the same KV cache) or
  retrieval + the answer with passages;
- a gate that also reads the closed-book draft (``stage="draft"``): prefill + signals + decode,
  then retrieval + the answer with passages when it retrieves;
- a policy that reads no signal (``stage="none"``: always, never, random) decides before any
  forward pass: retrieval + the answer with passages when it retrieves (always = plain RAG),
  prefill + decode when it does not (never = the closed-book LLM).

LM calls count prompts through the local model, as the router counts them: one per question for
a signal-free policy, one for a gate plus one more when it retrieves.

File schema (``both_branches.jsonl``, one JSON object per question)::

    {
      "id": "popqa_random/4121",          # unique in the file
      "dataset": "popqa_random",          # optional
      "model_id": "smollm2-135m",         # optional; the model whose features these are
      "closed_book_correct": false,        # JSON true/false
      "closed_book_score": 0.0,            # optional: token F1; null if not scored
      "closed_book_exact_match": false,    # optional
      "retrieval_correct": true,
      "retrieval_score": 1.0,              # optional
      "retrieval_exact_match": true,       # optional
      "seconds": {"prefill": 0.04, "signals": 0.002, "decode": 0.1,
                  "retrieve": 0.01, "answer_with_passages": 0.9},
      "features": {"next_token_max_prob": 0.41, "hidden_hoyer_last": 0.27, ...}
    }

``features`` holds every signal a gate could read (``null`` for a value that could not be
computed); :meth:`BothBranchRecord.gate_features` adds ``oracle_correct`` (the closed-book
label) so the oracle can be replayed as a ceiling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, StrictBool, ValidationError, model_validator

from knowgate.errors import DataError, InputError
from knowgate.jsonio import atomic_write_text, iter_jsonl
from knowgate.policy import ORACLE_FEATURE
from knowgate.schema import StrictModel, validation_problems

CACHE_FILE = "both_branches.jsonl"
DATASETS_DIR = "datasets"

GateStage = Literal["none", "prefill", "draft"]
"""What a policy reads before it decides: nothing, the prefill's signals, or also the draft's."""

Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class StageSeconds(StrictModel):
    """Per-question wall time of each stage a request can go through (seconds).

    Each is the question's share of a batched stage, as measured in the benchmark run.

    Attributes:
        prefill: the closed-book forward pass over the prompt (the gate's pass).
        signals: computing the gate's signals from that pass.
        decode: greedy decoding of the closed-book answer from the prefill's cache.
        retrieve: the retriever call.
        answer_with_passages: the forward pass with passages in the prompt (prefill + decode).
    """

    prefill: Seconds
    signals: Seconds
    decode: Seconds
    retrieve: Seconds
    answer_with_passages: Seconds


class BothBranchRecord(StrictModel):
    """One question's results on both branches (see the module docstring)."""

    id: str = Field(min_length=1)
    dataset: str | None = None
    model_id: str | None = None
    closed_book_correct: StrictBool
    closed_book_score: float | None = Field(default=None, allow_inf_nan=False)
    closed_book_exact_match: StrictBool | None = None
    retrieval_correct: StrictBool
    retrieval_score: float | None = Field(default=None, allow_inf_nan=False)
    retrieval_exact_match: StrictBool | None = None
    seconds: StageSeconds
    features: dict[str, float | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _refuse_request_totals(cls, data: Any) -> Any:
        if isinstance(data, dict) and "seconds" not in data and "retrieval_seconds" in data:
            raise ValueError(
                "this row has request totals (closed_book_seconds, retrieval_seconds) instead of "
                "per-stage 'seconds': the file was written before always-retrieve was timed as "
                "plain RAG; write it again with `knowgate bench` (its branch caches are reused)"
            )
        return data

    def gate_features(self) -> dict[str, float]:
        """The features a policy sees: computed values plus ``oracle_correct``."""
        out = {k: v for k, v in self.features.items() if v is not None}
        out.setdefault(ORACLE_FEATURE, float(self.closed_book_correct))
        return out


# ----------------------------------------------------------------------------- the outcome rule
@dataclass(frozen=True)
class BranchOutcomes:
    """Both branches of every question as aligned arrays (the input of :func:`policy_outcome`).

    Attributes:
        closed_book_correct: 1 when the closed-book answer is correct (In-Accuracy).
        retrieval_correct: 1 when the answer with retrieval is correct.
        closed_book_score: token F1 of the closed-book answer (NaN when not scored).
        retrieval_score: token F1 with retrieval (NaN when not scored).
        closed_book_exact_match: exact match closed-book (NaN when not scored).
        retrieval_exact_match: exact match with retrieval (NaN when not scored).
        seconds: stage name (the fields of :class:`StageSeconds`) -> seconds per question.
    """

    closed_book_correct: NDArray[np.float64]
    retrieval_correct: NDArray[np.float64]
    closed_book_score: NDArray[np.float64]
    retrieval_score: NDArray[np.float64]
    closed_book_exact_match: NDArray[np.float64]
    retrieval_exact_match: NDArray[np.float64]
    seconds: dict[str, NDArray[np.float64]]

    def __post_init__(self) -> None:
        n = self.closed_book_correct.shape
        arrays = [getattr(self, f) for f in self.__dataclass_fields__ if f != "seconds"]
        if any(a.shape != n for a in [*arrays, *self.seconds.values()]) or len(n) != 1:
            raise InputError("both-branch arrays must be 1-D and of one length")
        missing = set(StageSeconds.model_fields) - set(self.seconds)
        if missing:
            raise InputError(f"stage times missing: {sorted(missing)}")

    @property
    def n(self) -> int:
        """Number of questions."""
        return int(self.closed_book_correct.size)

    def subset(self, rows: NDArray[np.bool_] | NDArray[np.int64]) -> BranchOutcomes:
        """The same arrays restricted to ``rows`` (a mask or indices)."""
        return BranchOutcomes(
            self.closed_book_correct[rows],
            self.retrieval_correct[rows],
            self.closed_book_score[rows],
            self.retrieval_score[rows],
            self.closed_book_exact_match[rows],
            self.retrieval_exact_match[rows],
            {k: v[rows] for k, v in self.seconds.items()},
        )

    @classmethod
    def from_records(cls, records: Sequence[BothBranchRecord]) -> BranchOutcomes:
        """Arrays of a both-branch file's rows, in order."""

        def arr(values: Iterable[float | bool | None]) -> NDArray[np.float64]:
            return np.asarray([np.nan if v is None else float(v) for v in values])

        return cls(
            closed_book_correct=arr(r.closed_book_correct for r in records),
            retrieval_correct=arr(r.retrieval_correct for r in records),
            closed_book_score=arr(r.closed_book_score for r in records),
            retrieval_score=arr(r.retrieval_score for r in records),
            closed_book_exact_match=arr(r.closed_book_exact_match for r in records),
            retrieval_exact_match=arr(r.retrieval_exact_match for r in records),
            seconds={
                stage: arr(getattr(r.seconds, stage) for r in records)
                for stage in StageSeconds.model_fields
            },
        )


@dataclass(frozen=True)
class Outcome:
    """Per-question outcome of one policy's decisions (expected values for random gating).

    Attributes:
        correct: In-Accuracy of the answer served.
        exact_match: its exact match (NaN where unscored).
        score: its token F1 (NaN where unscored).
        retrieved: retriever calls (the decision; a probability for random gating).
        lm_calls: prompts through the local model.
        seconds: wall time of the request as the router serves it.
    """

    correct: NDArray[np.float64]
    exact_match: NDArray[np.float64]
    score: NDArray[np.float64]
    retrieved: NDArray[np.float64]
    lm_calls: NDArray[np.float64]
    seconds: NDArray[np.float64]

    @property
    def accuracy(self) -> float:
        """Mean In-Accuracy."""
        return float(self.correct.mean())

    @property
    def retrieval_rate(self) -> float:
        """Retriever calls per question."""
        return float(self.retrieved.mean())

    @property
    def lm_calls_per_question(self) -> float:
        """LM calls per question."""
        return float(self.lm_calls.mean())

    @property
    def mean_seconds(self) -> float:
        """Mean wall time per question."""
        return float(self.seconds.mean())


def policy_outcome(
    branches: BranchOutcomes,
    retrieve: ArrayLike,
    *,
    stage: GateStage,
    extra_lm_calls: ArrayLike = 0.0,
    extra_seconds: ArrayLike = 0.0,
) -> Outcome:
    """The retrieval answer where the policy retrieved, else the closed-book answer.

    Args:
        branches: both branches of every question.
        retrieve: per question, whether the policy retrieves (bool), or the probability that it
            does (random gating: every column is then an expected value).
        stage: what the policy reads before deciding (see :data:`GateStage`); it fixes the
            request's path through the router, hence its LM calls and latency.
        extra_lm_calls: LM calls the policy spends on top of the gate (e.g. sampled answers).
        extra_seconds: seconds it spends on top of the measured stages.

    Raises:
        InputError: ``retrieve`` has the wrong length or values outside [0, 1], or an unknown
            stage.
    """
    r = np.asarray(retrieve, dtype=np.float64).ravel()
    if r.shape != (branches.n,):
        raise InputError(f"{r.size} decisions for {branches.n} questions")
    if not np.all((r >= 0.0) & (r <= 1.0)):
        raise InputError("retrieve must be booleans or probabilities in [0, 1]")
    t = branches.seconds
    rag_path = t["retrieve"] + t["answer_with_passages"]
    if stage == "none":
        seconds = r * rag_path + (1.0 - r) * (t["prefill"] + t["decode"])
        lm_calls = np.ones_like(r)
    elif stage == "prefill":
        seconds = t["prefill"] + t["signals"] + r * rag_path + (1.0 - r) * t["decode"]
        lm_calls = 1.0 + r
    elif stage == "draft":
        seconds = t["prefill"] + t["signals"] + t["decode"] + r * rag_path
        lm_calls = 1.0 + r
    else:
        raise InputError(f"unknown gate stage {stage!r}; expected none, prefill or draft")

    def mix(rag: NDArray[np.float64], cb: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(r * rag + (1.0 - r) * cb)

    return Outcome(
        correct=mix(branches.retrieval_correct, branches.closed_book_correct),
        exact_match=mix(branches.retrieval_exact_match, branches.closed_book_exact_match),
        score=mix(branches.retrieval_score, branches.closed_book_score),
        retrieved=r,
        lm_calls=lm_calls + np.asarray(extra_lm_calls, dtype=np.float64),
        seconds=seconds + np.asarray(extra_seconds, dtype=np.float64),
    )


def stage_of(required_features: Iterable[str]) -> GateStage:
    """The stage a policy needs: ``none`` when it reads no feature, ``draft`` when it reads the
    closed-book draft's probabilities, else ``prefill``.
    """  # noqa: D205
    from knowgate.signals import POSITIONS, SignalConfig, feature_specs

    names = list(required_features)
    if not names:
        return "none"
    specs = feature_specs(SignalConfig(positions=POSITIONS))
    return "draft" if any(specs[n].stage == "draft" for n in names if n in specs) else "prefill"


# ------------------------------------------------------------------------------- file reading
def cache_path(cache: str | Path) -> Path:
    """The JSONL file of a cache directory (or the file itself when given)."""
    path = Path(cache)
    return path / CACHE_FILE if path.is_dir() else path


def read_both_branches(cache: str | Path) -> list[BothBranchRecord]:
    """Read and validate a both-branch file (or the one in a benchmark's output directory).

    Raises:
        DataError: missing or empty file, bad JSON, a row off the schema (with its line
            number), duplicate ids, or rows of different models.
    """
    path = cache_path(cache)
    if not path.is_file():
        raise DataError(
            f"both-branch cache not found: {path} (the benchmark writes {CACHE_FILE} into its "
            "output directory)"
        )
    records: list[BothBranchRecord] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, where, raw in iter_jsonl(fh, path, DataError):
            if not isinstance(raw, dict):
                raise DataError(f"{where}: expected a JSON object")
            try:
                record = BothBranchRecord.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(validation_problems(exc, root="<row>"))
                raise DataError(f"{where}: {problems}") from exc
            if record.id in seen:
                raise DataError(
                    f"{where}: duplicate id {record.id!r} (first on line {seen[record.id]})"
                )
            seen[record.id] = lineno
            records.append(record)
    if not records:
        raise DataError(f"both-branch cache is empty: {path}")
    models = {r.model_id for r in records if r.model_id is not None}
    if len(models) > 1:
        raise DataError(f"{path} mixes rows of several models: {sorted(models)}")
    return records


# ------------------------------------------------------------------------------- file writing
def _atomic_jsonl(path: Path, records: Iterable[BothBranchRecord]) -> None:
    text = "".join(
        json.dumps(r.model_dump(mode="json", exclude_none=True), allow_nan=False) + "\n"
        for r in records
    )
    atomic_write_text(path, text)


def write_both_branches(records: Sequence[BothBranchRecord], out_dir: Path) -> list[Path]:
    """Write ``both_branches.jsonl`` (all rows) and one per dataset, atomically.

    ``knowgate ab replay --cache OUT`` replays on every question;
    ``--cache OUT/datasets/NAME`` on one dataset.

    Returns:
        The files written, the pooled one first.

    Raises:
        DataError: no rows.
    """
    if not records:
        raise DataError("no both-branch rows to write")
    written = [Path(out_dir) / CACHE_FILE]
    _atomic_jsonl(written[0], records)
    for name in dict.fromkeys(r.dataset for r in records if r.dataset is not None):
        path = Path(out_dir) / DATASETS_DIR / name / CACHE_FILE
        _atomic_jsonl(path, [r for r in records if r.dataset == name])
        written.append(path)
    return written
