"""Consistency and self-report features: signals that cost extra model calls.

These are the field's reference methods that knowgate's single-pass gate is compared with:

- **Sampling consistency** (SelfCheckGPT, Manakul et al. 2023; SeaKR, Yao et al. 2024; SUGAR):
  sample ``K`` answers at temperature 1 from the same prompt and measure how often they agree
  with the greedy answer. A model that knows the answer says it consistently. Costs ``K`` extra
  decodes per query (LM calls = 1 + K).
- **Self-report** (the LangGraph adaptive-RAG router / LlamaIndex router pattern): ask the model
  whether it can answer from memory and read P(yes) from its next-token distribution. Costs one
  extra short prompt (LM calls = 2).

The features are pure functions of the texts and probabilities the model produced, so they can
be cached and recomputed without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from knowgate.errors import SignalError
from knowgate.signals.registry import register_external_feature
from knowgate.text import normalize_answer, token_f1

SAMPLE_AGREEMENT = "sample_agreement"
SAMPLE_LEXICAL_SIMILARITY = "sample_lexical_similarity"
SELF_REPORT_P_YES = "self_report_p_yes"

register_external_feature(
    SAMPLE_AGREEMENT,
    "consistency",
    "sampling",
    "share of sampled answers whose normal form equals the greedy answer's (higher = known)",
)
register_external_feature(
    SAMPLE_LEXICAL_SIMILARITY,
    "consistency",
    "sampling",
    "mean token F1 between the greedy answer and each sampled answer (higher = known)",
)
register_external_feature(
    SELF_REPORT_P_YES,
    "self_report",
    "self_report",
    "P(yes) / (P(yes) + P(no)) when asked whether it can answer from memory (higher = known)",
)


def sampling_consistency(greedy: str, samples: Sequence[str]) -> dict[str, float]:
    """Agreement of ``samples`` with the ``greedy`` answer (normal forms, see knowgate.text).

    Raises:
        SignalError: no samples, or a non-string answer.
    """
    if isinstance(samples, str) or not samples:
        raise SignalError("sampling consistency needs a non-empty list of sampled answers")
    if not isinstance(greedy, str) or not all(isinstance(s, str) for s in samples):
        raise SignalError("sampling consistency compares strings")
    reference = normalize_answer(greedy)
    normal = [normalize_answer(s) for s in samples]
    agreement = sum(n == reference for n in normal) / len(normal)
    similarity = sum(token_f1(n, reference) for n in normal) / len(normal)
    return {SAMPLE_AGREEMENT: float(agreement), SAMPLE_LEXICAL_SIMILARITY: float(similarity)}


def self_report(p_yes: float, p_no: float) -> dict[str, float]:
    """P(yes) renormalised over the two answers the question allows.

    Raises:
        SignalError: a probability is not finite or outside [0, 1], or both are zero.
    """
    for name, p in (("p_yes", p_yes), ("p_no", p_no)):
        if not isinstance(p, int | float) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise SignalError(f"self-report {name} must be a probability, got {p!r}")
    if p_yes + p_no <= 0.0:
        raise SignalError("self-report: the model gives 'yes' and 'no' zero probability")
    return {SELF_REPORT_P_YES: float(p_yes / (p_yes + p_no))}
