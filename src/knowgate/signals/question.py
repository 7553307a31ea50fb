"""Question-only features: what can be read from the question text alone, without the model.

A confound baseline. Closed-book correctness depends heavily on the question's template (PopQA
capital/country questions are answered far more often than screenwriter/director ones), so a
model signal that predicts correctness no better than these features is reading the template,
not the model's knowledge. In the spirit of Marina et al. 2025, "LLM-Independent Adaptive RAG:
Let the Question Speak for Itself" (arXiv 2505.04253).

Every feature is a pure function of the question text and optional dataset metadata (the PopQA
relation in ``metadata["prop"]``); the names all start with ``question_`` and are listed in
:data:`QUESTION_FEATURES` (the signals registry exposes them as the ``question`` family).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from knowgate.errors import SignalError

WH_WORDS: tuple[str, ...] = ("what", "who", "where", "when", "which", "how", "why")

# The 16 relations of PopQA (Mallen et al. 2023); fixed so feature names do not depend on data.
POPQA_RELATIONS: tuple[str, ...] = (
    "author",
    "capital",
    "capital of",
    "color",
    "composer",
    "country",
    "director",
    "father",
    "genre",
    "mother",
    "occupation",
    "place of birth",
    "producer",
    "religion",
    "screenwriter",
    "sport",
)

_WORD = re.compile(r"\w+", re.UNICODE)


def relation_feature_name(relation: str) -> str:
    """``place of birth`` -> ``question_relation_place_of_birth``."""
    return "question_relation_" + "_".join(relation.lower().split())


def _describe() -> dict[str, str]:
    out = {
        "question_num_tokens": "number of words in the question",
        "question_num_chars": "number of characters in the question",
        "question_num_digits": "number of digit characters in the question",
        "question_num_capitalized": "capitalised words after the first (named-entity proxy)",
    }
    for wh in WH_WORDS:
        out[f"question_wh_{wh}"] = f"1 if the first wh-word of the question is '{wh}'"
    out["question_wh_none"] = "1 if the question has no wh-word"
    for rel in POPQA_RELATIONS:
        out[relation_feature_name(rel)] = f"1 if metadata says the PopQA relation is '{rel}'"
    out["question_relation_other"] = "1 if metadata names a relation outside PopQA's 16"
    out["question_relation_unknown"] = "1 if metadata has no relation (e.g. NQ)"
    return out


QUESTION_FEATURES: dict[str, str] = _describe()
"""Every question feature name with a one-line description, in a stable order."""


def compute_question_features(
    question: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Every question feature of one question.

    Args:
        question: the question text.
        metadata: optional dataset metadata; ``metadata["prop"]`` sets the relation one-hot.

    Raises:
        SignalError: the question is not a non-empty string.
    """
    if not isinstance(question, str) or not question.strip():
        raise SignalError("question features need a non-empty question string")
    words = _WORD.findall(question)
    lower = [w.lower() for w in words]
    out = dict.fromkeys(QUESTION_FEATURES, 0.0)
    out["question_num_tokens"] = float(len(words))
    out["question_num_chars"] = float(len(question.strip()))
    out["question_num_digits"] = float(sum(ch.isdigit() for ch in question))
    out["question_num_capitalized"] = float(sum(w[:1].isupper() for w in words[1:]))
    first_wh = next((w for w in lower if w in WH_WORDS), None)
    out[f"question_wh_{first_wh}" if first_wh else "question_wh_none"] = 1.0
    relation = (metadata or {}).get("prop")
    if isinstance(relation, str) and relation.strip():
        name = relation_feature_name(relation)
        out[name if name in out else "question_relation_other"] = 1.0
    else:
        out["question_relation_unknown"] = 1.0
    return out
