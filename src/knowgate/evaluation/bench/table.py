"""Both branches of every question side by side: the benchmark's table.

:class:`BenchTable` joins the closed-book records (features, label, groups:
:class:`~knowgate.evaluation.labelled.LabelledTable`) with the retrieval-branch records of the
same questions into :class:`~knowgate.evaluation.both_branches.BranchOutcomes`, the input of the
one outcome rule, and writes itself as the both-branch file ``knowgate ab replay`` reads.

Stage times per question (shares of batched stages): the closed-book prefill and decode come
from the closed-book run, re-scaled to this run's conditions and with the router's signal time
added (:mod:`knowgate.evaluation.branches.timing`); retrieval and the answer with passages
from the retrieval-branch run, timed in this run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError
from knowgate.evaluation.both_branches import (
    BothBranchRecord,
    BranchOutcomes,
    GateStage,
    Outcome,
    StageSeconds,
    policy_outcome,
)
from knowgate.evaluation.branches.closed_book import ClosedBookRecord
from knowgate.evaluation.branches.retrieval import RetrievalRecord
from knowgate.evaluation.branches.timing import ClosedBookTiming
from knowgate.evaluation.labelled import LabelledTable, build_table


@dataclass(frozen=True)
class BenchTable:
    """Every question's closed-book and retrieval outcome, features and costs, row-aligned.

    Attributes:
        model_id: the model both branches ran.
        labelled: closed-book side: features (model and question-only), label ``y`` (closed-book
            In-Accuracy), cross-validation groups, dataset, relation and popularity per row.
        retrieval: the retrieval-branch records, in row order.
        branches: both branches' correctness, scores and stage times.
        evidence_hit: 1 when a passage in the prompt is a gold evidence passage, 0 when not, NaN
            when the row lists no evidence.
        extra: named per-row arrays beyond the closed-book features (peer signals from
            :mod:`~knowgate.evaluation.branches.peers`, stored hidden states for probes), for
            policy families that read them; ``[n, ...]`` each.
    """

    model_id: str
    labelled: LabelledTable
    retrieval: tuple[RetrievalRecord, ...]
    branches: BranchOutcomes
    evidence_hit: NDArray[np.float64]
    extra: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [k for k, v in self.extra.items() if v.shape[:1] != (self.n,)]
        if bad:
            raise DataError(f"extra arrays {bad} do not have one row per question ({self.n})")

    @property
    def n(self) -> int:
        """Number of questions."""
        return int(self.labelled.y.size)

    @property
    def cb_correct(self) -> NDArray[np.int64]:
        """1 when the closed-book answer is correct (the label of every gate)."""
        return self.labelled.y

    @property
    def rag_correct(self) -> NDArray[np.int64]:
        """1 when the answer with retrieval is correct."""
        return self.branches.retrieval_correct.astype(np.int64)

    @property
    def datasets(self) -> NDArray[np.str_]:
        """Dataset name per row."""
        return self.labelled.datasets

    def outcome(
        self,
        retrieve: NDArray[np.bool_] | NDArray[np.float64],
        stage: GateStage,
        rows: NDArray[np.bool_] | None = None,
    ) -> Outcome:
        """The one outcome rule on this table (restricted to ``rows`` when given)."""
        if rows is None:
            return policy_outcome(self.branches, retrieve, stage=stage)
        return policy_outcome(self.branches.subset(rows), retrieve[rows], stage=stage)

    def row_ids(self) -> list[str]:
        """``dataset/id`` per row (unique across datasets)."""
        return [f"{r.dataset}/{r.id}" for r in self.labelled.records]

    def to_records(self) -> list[BothBranchRecord]:
        """The both-branch file's rows: every feature a gate or baseline could read.

        Features are every model signal, the question-only features and ``s_pop`` where the row
        has it (the popularity policy's input).
        """
        lab, b = self.labelled, self.branches
        names = list(lab.features)
        out = []
        for i, row_id in enumerate(self.row_ids()):
            features: dict[str, float | None] = {n: float(lab.features[n][i]) for n in names}
            if np.isfinite(lab.popularity[i]):
                features["s_pop"] = float(lab.popularity[i])
            out.append(
                BothBranchRecord(
                    id=row_id,
                    dataset=str(lab.datasets[i]),
                    model_id=self.model_id,
                    closed_book_correct=bool(lab.y[i]),
                    closed_book_score=round(float(b.closed_book_score[i]), 6),
                    closed_book_exact_match=bool(b.closed_book_exact_match[i]),
                    retrieval_correct=bool(b.retrieval_correct[i]),
                    retrieval_score=round(float(b.retrieval_score[i]), 6),
                    retrieval_exact_match=bool(b.retrieval_exact_match[i]),
                    seconds=StageSeconds(
                        **{k: round(float(v[i]), 6) for k, v in b.seconds.items()}
                    ),
                    features=features,
                )
            )
        return out


def build_bench_table(
    closed_book: Sequence[ClosedBookRecord],
    retrieval: Sequence[RetrievalRecord],
    *,
    model_id: str,
    timings: Mapping[str, ClosedBookTiming] | None = None,
) -> BenchTable:
    """Align the two branches question by question.

    Args:
        closed_book: closed-book records (their order is the table's row order).
        retrieval: retrieval-branch records of the same questions.
        model_id: the model both branches ran.
        timings: per dataset, the re-timing that puts cached closed-book prefill and decode
            times on the footing of this run and measures the signals' time; datasets without
            one keep their cached times and count no signal time.

    Raises:
        DataError: the branches hold different questions, or none.
    """
    if not closed_book:
        raise DataError("no questions to benchmark")
    by_key = {(r.dataset, r.id): r for r in retrieval}
    missing = [(r.dataset, r.id) for r in closed_book if (r.dataset, r.id) not in by_key]
    if missing or len(by_key) != len(closed_book):
        raise DataError(
            f"the closed-book and retrieval branches hold different questions "
            f"({len(closed_book)} vs {len(by_key)}; e.g. missing {missing[:3]})"
        )
    rag = [by_key[(r.dataset, r.id)] for r in closed_book]
    timed = dict(timings or {})

    def per_question(values: Sequence[float]) -> NDArray[np.float64]:
        return np.asarray(values, dtype=np.float64)

    def factor(r: ClosedBookRecord, stage: str) -> float:
        t = timed.get(r.dataset)
        if t is None:
            return 1.0
        return t.prefill_factor if stage == "prefill" else t.decode_factor

    seconds = {
        "prefill": per_question(
            [r.prefill_seconds / max(1, r.batch_size) * factor(r, "prefill") for r in closed_book]
        ),
        "signals": per_question(
            [timed[r.dataset].signals_seconds if r.dataset in timed else 0.0 for r in closed_book]
        ),
        "decode": per_question(
            [r.decode_seconds / max(1, r.batch_size) * factor(r, "decode") for r in closed_book]
        ),
        "retrieve": per_question([r.retrieve_seconds for r in rag]),
        "answer_with_passages": per_question([r.answer_seconds for r in rag]),
    }
    branches = BranchOutcomes(
        closed_book_correct=per_question([float(r.correct) for r in closed_book]),
        retrieval_correct=per_question([float(r.correct) for r in rag]),
        closed_book_score=per_question([r.score.f1 for r in closed_book]),
        retrieval_score=per_question([r.score.f1 for r in rag]),
        closed_book_exact_match=per_question([float(r.score.exact_match) for r in closed_book]),
        retrieval_exact_match=per_question([float(r.score.exact_match) for r in rag]),
        seconds=seconds,
    )
    return BenchTable(
        model_id=model_id,
        labelled=build_table(closed_book),
        retrieval=tuple(rag),
        branches=branches,
        evidence_hit=per_question(
            [np.nan if r.evidence_hit is None else float(r.evidence_hit) for r in rag]
        ),
    )
