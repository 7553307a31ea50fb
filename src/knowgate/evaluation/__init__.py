"""Evaluation: labelled datasets, answer scoring, the branch runners, cross-fitting, the
calibration study and the benchmark, and their reports.

- :mod:`~knowgate.evaluation.datasets`, :mod:`~knowgate.evaluation.sampling`,
  :mod:`~knowgate.evaluation.scoring`, :mod:`~knowgate.evaluation.metrics`: questions, labels,
  metrics.
- :mod:`~knowgate.evaluation.branches`: each question answered closed-book, with retrieval and
  with the peers' extra calls, as one cached-runner template.
- :mod:`~knowgate.evaluation.both_branches`: the both-branch table's file schema, writer and
  reader, and the one outcome rule (the benchmark and ``knowgate ab replay`` share it).
- :mod:`~knowgate.evaluation.labelled`, :mod:`~knowgate.evaluation.cross_fitting`,
  :mod:`~knowgate.evaluation.operating_rules`: the labelled table, the one cross-fitting routine,
  where to cut p(known).
- :mod:`~knowgate.evaluation.calibration`: the calibration study (``knowgate calibrate``).
- :mod:`~knowgate.evaluation.bench`: the benchmark (``knowgate bench``).
- :mod:`~knowgate.evaluation.reporting`: what both reports share.

Submodules are imported directly (``knowgate.evaluation.branches.closed_book``); this package does
not import torch or scikit-learn on its own.
"""  # noqa: D205

from knowgate.evaluation.datasets import (
    QADataset,
    QAExample,
    default_data_dir,
    load_dataset,
    normalize_question,
)
from knowgate.evaluation.scoring import AnswerScore, normalize_answer, score_answer, token_f1

__all__ = [
    "AnswerScore",
    "QADataset",
    "QAExample",
    "default_data_dir",
    "load_dataset",
    "normalize_answer",
    "normalize_question",
    "score_answer",
    "token_f1",
]
