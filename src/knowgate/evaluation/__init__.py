"""Evaluation: labelled datasets, answer scoring, cached closed-book runs and metrics.

Submodules are imported directly (``knowgate.evaluation.closed_book``); this package does not
import torch or scikit-learn on its own.
"""

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
