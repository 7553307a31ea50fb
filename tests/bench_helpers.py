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


PROBE_LAYERS = (1, 5, 9)
POSITIONS = ("prompt_end", "question_end", "question_mean")
INFORMATIVE_SITE = ("hidden_state_layer5_at_question_end", 1, 1)  # name, layer index, position
SPARSITY_ROWS = ("hidden_hoyer", "mlp_gini")
SPARSITY_LAYERS = (0, 3, 6, 9)
PROBE_DIM = 8
SAMPLES = 5
SAMPLE_SECONDS = 0.5
REPORT_SECONDS = 0.05


def with_arrays_and_peers(table, seed: int = 0):
    """The table plus synthetic stored hidden states, per-layer sparsity and peer signals.

    The latent knowledge value is recovered from the closed-book features' informative column
    (``next_token_max_prob`` = latent + noise), so the added signals carry it by construction:

    - hidden states: one direction of block 5 at ``question_end`` carries it; every other
      (block, position) is noise;
    - per-layer sparsity: ``hidden_hoyer`` at block 6 (index 2), ``question_end``, carries it;
    - peers (every other question): ``sample_agreement`` carries it, ``sample_lexical_similarity``
      weakly, ``self_report_p_yes`` is noise; each sampled question costs 0.5 s and the
      self-report 0.05 s.
    """
    import dataclasses

    from knowgate.evaluation.bench.table import PeerSignals
    from knowgate.evaluation.branches.closed_book import ClosedBookArrays

    rng = np.random.default_rng(seed)
    n = table.n
    signal = table.labelled.features[INFORMATIVE[0]]
    hidden = rng.normal(size=(n, len(PROBE_LAYERS), len(POSITIONS), PROBE_DIM))
    _, layer, position = INFORMATIVE_SITE
    hidden[:, layer, position, :3] += signal[:, None] * np.array([2.0, -1.6, 1.2])
    sparsity = rng.normal(size=(n, len(SPARSITY_ROWS), len(POSITIONS), len(SPARSITY_LAYERS)))
    sparsity[:, 0, 1, 2] = signal + 0.3 * rng.normal(size=n)
    arrays = ClosedBookArrays(
        probe_hidden=hidden.astype(np.float16),
        probe_layers=PROBE_LAYERS,
        positions=POSITIONS,
        sparsity_by_layer=sparsity.astype(np.float32),
        sparsity_rows=SPARSITY_ROWS,
        sparsity_layers=SPARSITY_LAYERS,
    )
    rows = np.arange(n) % 2 == 0
    features = {
        "sample_agreement": np.where(rows, expit(signal + 0.3 * rng.normal(size=n)), np.nan),
        "sample_lexical_similarity": np.where(
            rows, expit(0.3 * signal + rng.normal(size=n)), np.nan
        ),
        "self_report_p_yes": np.where(rows, rng.random(n), np.nan),
    }
    peers = PeerSignals(
        rows=rows,
        features=features,
        sample_seconds=np.where(rows, SAMPLE_SECONDS, np.nan),
        self_report_seconds=np.where(rows, REPORT_SECONDS, np.nan),
        samples=SAMPLES,
    )
    return dataclasses.replace(table, arrays=arrays, peers=peers)
