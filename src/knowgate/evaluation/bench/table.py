"""Both branches of every question side by side, and the replay cache written from them.

With the closed-book and the retrieval answer of a question both known, any gating policy's
outcome on it is known exactly: the retrieval answer when it retrieves, the closed-book one when
it does not. :class:`BenchTable` holds the two branches as aligned arrays (plus the closed-book
features and labels of :class:`~knowgate.evaluation.calibration_study.LabelledTable`);
:func:`write_both_branches` writes them in the schema of
:class:`~knowgate.experiments.replay.BothBranchRecord`, so ``knowgate ab replay`` can judge new
policies on the benchmark's questions.

Wall time of a request as the router serves it (pre-generation gate):

- answered closed-book: gate (prefill, signals, policy) + greedy decode;
- retrieving: gate + retrieval + the answer with passages;
- a draft-mode gate also decodes the closed-book draft before retrieving.

Gate, retrieval and answer times come from the retrieval-branch run (shares of batched stages);
the decode time from the closed-book run, re-scaled to this run's conditions
(:mod:`knowgate.evaluation.bench.decode_timing`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import DataError
from knowgate.evaluation.bench.retrieval_branch import RetrievalRecord
from knowgate.evaluation.calibration_study import LabelledTable, build_table
from knowgate.evaluation.closed_book import ClosedBookRecord
from knowgate.jsonio import atomic_write_text

CACHE_FILE = "both_branches.jsonl"  # the name knowgate.experiments.replay reads
DATASETS_DIR = "datasets"


@dataclass(frozen=True)
class BenchTable:
    """Every question's closed-book and retrieval outcome, features and costs, row-aligned.

    Attributes:
        model_id: the model both branches ran.
        labelled: closed-book side: features (model and question-only), label ``y`` (closed-book
            In-Accuracy), cross-validation groups, dataset, relation and popularity per row.
        retrieval: the retrieval-branch records, in row order.
        rag_correct: 1 when the answer with retrieval is correct (In-Accuracy).
        cb_em: closed-book exact match (0/1).
        cb_f1: closed-book token F1.
        rag_em: exact match with retrieval.
        rag_f1: token F1 with retrieval.
        evidence_hit: 1 when a passage in the prompt is a gold evidence passage, 0 when not, NaN
            when the row lists no evidence.
        gate_seconds: closed-book prefill + signals + policy.
        decode_seconds: greedy closed-book decode.
        retrieve_seconds: retriever call.
        answer_seconds: forward pass with passages (prefill + decode).
    """

    model_id: str
    labelled: LabelledTable
    retrieval: tuple[RetrievalRecord, ...]
    rag_correct: NDArray[np.int64]
    cb_em: NDArray[np.float64]
    cb_f1: NDArray[np.float64]
    rag_em: NDArray[np.float64]
    rag_f1: NDArray[np.float64]
    evidence_hit: NDArray[np.float64]
    gate_seconds: NDArray[np.float64]
    decode_seconds: NDArray[np.float64]
    retrieve_seconds: NDArray[np.float64]
    answer_seconds: NDArray[np.float64]

    @property
    def n(self) -> int:
        """Number of questions."""
        return int(self.labelled.y.size)

    @property
    def cb_correct(self) -> NDArray[np.int64]:
        """1 when the closed-book answer is correct (the label of every gate)."""
        return self.labelled.y

    def closed_book_seconds(self) -> NDArray[np.float64]:
        """A request answered closed-book by a pre-generation gate."""
        return self.gate_seconds + self.decode_seconds

    def retrieval_seconds(self, *, draft_gate: bool = False) -> NDArray[np.float64]:
        """A retrieving request; a draft-mode gate decoded the closed-book draft first."""
        extra = self.decode_seconds if draft_gate else 0.0
        return self.gate_seconds + extra + self.retrieve_seconds + self.answer_seconds

    def plain_rag_seconds(self) -> NDArray[np.float64]:
        """Classic RAG without a gate: retrieval and the answer with passages only."""
        return self.retrieve_seconds + self.answer_seconds

    def row_ids(self) -> list[str]:
        """``dataset/id`` per row (unique across datasets)."""
        return [f"{r.dataset}/{r.id}" for r in self.labelled.records]


def build_bench_table(
    closed_book: Sequence[ClosedBookRecord],
    retrieval: Sequence[RetrievalRecord],
    *,
    model_id: str,
    decode_factor: Mapping[str, float] | None = None,
) -> BenchTable:
    """Align the two branches question by question.

    Args:
        closed_book: closed-book records (their order is the table's row order).
        retrieval: retrieval-branch records of the same questions.
        model_id: the model both branches ran.
        decode_factor: per dataset, the factor that puts cached closed-book decode times on
            the footing of this run (see :mod:`knowgate.evaluation.bench.decode_timing`).

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
    factors = dict(decode_factor or {})

    def arr(values: Any, dtype: Any = np.float64) -> Any:
        return np.asarray(list(values), dtype=dtype)

    return BenchTable(
        model_id=model_id,
        labelled=build_table(closed_book),
        retrieval=tuple(rag),
        rag_correct=arr((int(r.correct) for r in rag), np.int64),
        cb_em=arr(float(r.score.exact_match) for r in closed_book),
        cb_f1=arr(r.score.f1 for r in closed_book),
        rag_em=arr(float(r.score.exact_match) for r in rag),
        rag_f1=arr(r.score.f1 for r in rag),
        evidence_hit=arr(np.nan if r.evidence_hit is None else float(r.evidence_hit) for r in rag),
        gate_seconds=arr(r.gate_seconds for r in rag),
        decode_seconds=arr(
            r.decode_seconds / max(1, r.batch_size) * factors.get(r.dataset, 1.0)
            for r in closed_book
        ),
        retrieve_seconds=arr(r.retrieve_seconds for r in rag),
        answer_seconds=arr(r.answer_seconds for r in rag),
    )


def _rows(table: BenchTable, mask: NDArray[np.bool_]) -> list[dict[str, Any]]:
    lab = table.labelled
    names = list(lab.features)
    cb_s, rag_s = table.closed_book_seconds(), table.retrieval_seconds()
    out = []
    ids = table.row_ids()
    for i in np.flatnonzero(mask):
        features: dict[str, float | None] = {n: float(lab.features[n][i]) for n in names}
        if np.isfinite(lab.popularity[i]):
            features["s_pop"] = float(lab.popularity[i])
        out.append(
            {
                "id": ids[i],
                "dataset": str(lab.datasets[i]),
                "model_id": table.model_id,
                "closed_book_correct": bool(lab.y[i]),
                "closed_book_score": round(float(table.cb_f1[i]), 6),
                "retrieval_correct": bool(table.rag_correct[i]),
                "retrieval_score": round(float(table.rag_f1[i]), 6),
                "closed_book_seconds": round(float(cb_s[i]), 6),
                "retrieval_seconds": round(float(rag_s[i]), 6),
                "features": features,
            }
        )
    return out


def _atomic_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))


def write_both_branches(table: BenchTable, out_dir: Path) -> list[Path]:
    """Write ``both_branches.jsonl`` (all questions) and one per dataset, atomically.

    ``knowgate ab replay --cache OUT`` replays on every question;
    ``--cache OUT/datasets/NAME`` on one dataset. Features are every model signal, the
    question-only features and ``s_pop`` where the row has it (the popularity policy's input).
    """
    lab = table.labelled
    written = [Path(out_dir) / CACHE_FILE]
    _atomic_jsonl(written[0], _rows(table, np.ones(table.n, dtype=bool)))
    for name in dict.fromkeys(lab.datasets.tolist()):
        path = Path(out_dir) / DATASETS_DIR / name / CACHE_FILE
        _atomic_jsonl(path, _rows(table, lab.datasets == name))
        written.append(path)
    return written
