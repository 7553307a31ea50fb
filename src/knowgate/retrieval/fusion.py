"""Reciprocal rank fusion (Cormack, Clarke & Büttcher 2009).

RRF combines ranked lists by rank alone, ``score(d) = sum_i 1 / (k + rank_i(d))``, so it needs no
calibration between cosine similarities and BM25 scores, which live on unrelated scales. It is the
standard way to fuse a dense and a lexical retriever.
"""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int, *, rrf_k: int = 60
) -> list[tuple[int, float]]:
    """Fuse ranked lists of document rows into one top-``k`` list.

    Args:
        rankings: each list holds document rows, best first; a row may be absent from some.
        k: how many fused results to return.
        rrf_k: the RRF constant; larger values flatten the advantage of top ranks.

    Returns:
        ``(row, fused score)`` pairs, best first. Ties keep the order in which rows were first
        met (earlier lists, then better ranks), so results are deterministic.
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (rrf_k + rank)
    ordered = sorted(scores.items(), key=lambda item: -item[1])  # stable: ties keep first-met
    return ordered[:k]
