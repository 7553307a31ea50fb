"""Both branches of every question side by side: the benchmark's table.

:class:`BenchTable` joins the closed-book records (features, label, groups:
:class:`~knowgate.evaluation.labelled.LabelledTable`) with the retrieval-branch records of the
same questions into :class:`~knowgate.evaluation.both_branches.BranchOutcomes`, the input of the
one outcome rule, and writes itself as the both-branch file ``knowgate ab replay`` reads.

Stage times per question (shares of batched stages): the closed-book prefill and decode come
from the closed-book run, re-scaled to this run's conditions and with the router's signal time
added (:mod:`knowgate.evaluation.branches.timing`); retrieval and the answer with passages
from the retrieval-branch run, timed in this run.

Beside them, when available: the hidden states and per-layer sparsity stored with the closed-book
cache (:class:`~knowgate.evaluation.branches.closed_book.ClosedBookArrays`, for probes and the
layer study) and the peers branch's signals (:class:`PeerSignals`: sampling consistency and
self-report, on the questions the peers branch ran).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError, SignalError
from knowgate.evaluation.both_branches import (
    BothBranchRecord,
    BranchOutcomes,
    GateStage,
    Outcome,
    StageSeconds,
    policy_outcome,
)
from knowgate.evaluation.branches.closed_book import ClosedBookArrays, ClosedBookRecord
from knowgate.evaluation.branches.peers import PeerRecord
from knowgate.evaluation.branches.retrieval import RetrievalRecord
from knowgate.evaluation.branches.timing import ClosedBookTiming
from knowgate.evaluation.labelled import LabelledTable, build_table
from knowgate.signals.consistency import (
    SAMPLE_AGREEMENT,
    SAMPLE_LEXICAL_SIMILARITY,
    SELF_REPORT_P_YES,
    sampling_consistency,
    self_report,
)

PEER_FEATURES = (SAMPLE_AGREEMENT, SAMPLE_LEXICAL_SIMILARITY, SELF_REPORT_P_YES)


@dataclass(frozen=True)
class PeerSignals:
    """The peers branch's signals, one row per benchmark question (NaN where it did not run).

    Attributes:
        rows: questions the peers branch ran (a seeded sample, or all).
        features: ``sample_agreement``, ``sample_lexical_similarity`` (against the closed-book
            greedy answer) and ``self_report_p_yes`` per row.
        sample_seconds: per question, its share of the batch's sampling call.
        self_report_seconds: per question, its share of the batch's self-report prefill.
        samples: answers sampled per question (``K``).
    """

    rows: NDArray[np.bool_]
    features: dict[str, NDArray[np.float64]]
    sample_seconds: NDArray[np.float64]
    self_report_seconds: NDArray[np.float64]
    samples: int


def peer_signals(
    closed_book: Sequence[ClosedBookRecord], peers: Sequence[PeerRecord]
) -> PeerSignals:
    """Align peer records with the closed-book rows and compute their features.

    Raises:
        DataError: the peers ran a question the closed-book branch did not, or a self-report
            with zero probability for both words.
    """
    index = {(r.dataset, r.id): i for i, r in enumerate(closed_book)}
    n = len(closed_book)
    rows = np.zeros(n, dtype=bool)
    features = {name: np.full(n, np.nan) for name in PEER_FEATURES}
    sample_seconds = np.full(n, np.nan)
    report_seconds = np.full(n, np.nan)
    counts = set()
    for rec in peers:
        key = (rec.dataset, rec.id)
        if key not in index:
            raise DataError(f"the peers branch ran {key}, which the benchmark does not hold")
        i = index[key]
        try:
            values = {
                **sampling_consistency(closed_book[i].answer, rec.samples),
                **self_report(rec.p_yes, rec.p_no),
            }
        except SignalError as exc:
            raise DataError(f"peer signals of {key}: {exc}") from exc
        for name, value in values.items():
            features[name][i] = value
        sample_seconds[i] = rec.sample_seconds / max(1, rec.batch_size)
        report_seconds[i] = rec.self_report_seconds / max(1, rec.batch_size)
        rows[i] = True
        counts.add(len(rec.samples))
    if len(counts) > 1:
        raise DataError(f"peer records sampled different numbers of answers: {sorted(counts)}")
    return PeerSignals(
        rows, features, sample_seconds, report_seconds, counts.pop() if counts else 0
    )


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
        extra: named per-row arrays beyond the closed-book features, for policy families that
            read them; ``[n, ...]`` each.
        arrays: the closed-book cache's hidden states and per-layer sparsity (``None`` when not
            loaded).
        peers: the peers branch's signals (``None`` when it was not run).
    """

    model_id: str
    labelled: LabelledTable
    retrieval: tuple[RetrievalRecord, ...]
    branches: BranchOutcomes
    evidence_hit: NDArray[np.float64]
    extra: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    arrays: ClosedBookArrays | None = None
    peers: PeerSignals | None = None

    def __post_init__(self) -> None:
        bad = [k for k, v in self.extra.items() if v.shape[:1] != (self.n,)]
        if self.arrays is not None and self.arrays.probe_hidden.shape[0] != self.n:
            bad.append("closed-book arrays")
        if self.peers is not None and self.peers.rows.shape != (self.n,):
            bad.append("peer signals")
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

        Features are every model signal, the question-only features, ``s_pop`` where the row
        has it (the popularity policy's input) and the peers' signals where they ran.
        """
        lab, b = self.labelled, self.branches
        names = list(lab.features)
        out = []
        for i, row_id in enumerate(self.row_ids()):
            features: dict[str, float | None] = {n: float(lab.features[n][i]) for n in names}
            if np.isfinite(lab.popularity[i]):
                features["s_pop"] = float(lab.popularity[i])
            if self.peers is not None and self.peers.rows[i]:
                for name, values in self.peers.features.items():
                    features[name] = float(values[i])
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
    arrays: ClosedBookArrays | None = None,
    peers: Sequence[PeerRecord] | None = None,
) -> BenchTable:
    """Align the two branches question by question.

    Args:
        closed_book: closed-book records (their order is the table's row order).
        retrieval: retrieval-branch records of the same questions.
        model_id: the model both branches ran.
        timings: per dataset, the re-timing that puts cached closed-book prefill and decode
            times on the footing of this run and measures the signals' time; datasets without
            one keep their cached times and count no signal time.
        arrays: the closed-book cache's arrays, in the same row order.
        peers: peer records of (some of) the same questions.

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
        arrays=arrays,
        peers=None if peers is None else peer_signals(closed_book, peers),
    )
