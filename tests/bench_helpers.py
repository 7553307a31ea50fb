"""Synthetic both-branch records whose answers are known (the benchmark tests' data).

Questions have a latent "knowledge" value; closed-book correctness follows it, two registry
features carry it (plus noise) and ten other features are pure noise. Retrieval is right for 40%
of the questions the model does not know and for 75% of those it knows. Even questions form
``popqa_like`` (with a relation and ``s_pop``), odd ones ``nq_like``; every tenth question also
occurs in ``nq_like`` (same text, answer and features), like the questions PopQA's two files
share. So ``popqa_like`` holds 450 questions and ``nq_like`` 540, 90 of them shared.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
from scipy.special import expit

from knowgate.evaluation.branches.closed_book import ClosedBookRecord
from knowgate.evaluation.branches.retrieval import RetrievalRecord
from knowgate.evaluation.datasets import QAExample
from knowgate.evaluation.scoring import AnswerScore

INFORMATIVE = ("next_token_max_prob", "hidden_hoyer_last")
NOISE = (
    "next_token_entropy",
    "next_token_margin",
    "hidden_gini_last",
    "hidden_top1_energy_mean",
    "hidden_l0_density_mid",
    "mlp_hoyer_last",
    "mlp_gini_mean",
    "mlp_near_zero_fraction_last",
    "draft_min_prob",
    "draft_mean_entropy",
)
RELATIONS = ("capital", "occupation", "sport")
N_QUESTIONS = 900
SHARED_EVERY = 10  # every 10th question also occurs in the other dataset


def _score(correct: bool) -> AnswerScore:
    return AnswerScore(correct, correct, float(correct))


def synthetic_records(
    n: int = N_QUESTIONS, seed: int = 0
) -> tuple[list[ClosedBookRecord], list[RetrievalRecord]]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    cb = rng.random(n) < expit(-2.2 + 2.0 * latent)
    rag = np.where(cb, rng.random(n) < 0.75, rng.random(n) < 0.4)
    closed, retrieval = [], []
    for i in range(n):
        features = {name: float(rng.normal()) for name in NOISE}
        features[INFORMATIVE[0]] = float(latent[i] + 0.5 * rng.normal())
        features[INFORMATIVE[1]] = float(-latent[i] + 0.7 * rng.normal())
        s_pop = float(10 ** (2 + latent[i] + rng.normal()))
        datasets = ["popqa_like" if i % 2 == 0 else "nq_like"]
        if i % SHARED_EVERY == 0:
            datasets.append("nq_like")  # the same question, answered alike, in both datasets
        for dataset in datasets:
            relation = RELATIONS[i % 3]
            meta = {"prop": relation, "s_pop": s_pop} if dataset == "popqa_like" else {}
            example = QAExample(
                id=f"{dataset}-{i}",
                question=f"What is the {relation} of entity number {i}?",
                golden_answers=("x",),
                metadata=MappingProxyType(meta),
            )
            closed.append(
                ClosedBookRecord(
                    example=example,
                    dataset=dataset,
                    answer="x" if cb[i] else "y",
                    stop_reason="newline",
                    score=_score(bool(cb[i])),
                    features=features,
                    prompt_tokens=20,
                    prefill_seconds=0.8,
                    decode_seconds=1.6,
                    batch_size=8,
                )
            )
            retrieval.append(
                RetrievalRecord(
                    example=example,
                    dataset=dataset,
                    answer="x" if rag[i] else "z",
                    score=_score(bool(rag[i])),
                    passage_ids=("p1", "p2", "p3"),
                    evidence_hit=None,
                    retrieval_error=None,
                    retrieve_seconds=0.01,
                    answer_seconds=0.9,
                    batch_size=8,
                )
            )
    return closed, retrieval
