"""PopQA breakdowns: by popularity bucket and relation, and sparsity against popularity.

Popularity (``s_pop``, monthly page views of the subject) is PopQA's ground-truth familiarity
axis (Mallen et al. 2023). If sparsity reads how well the model knows its input (Jin et al.
2026), sparsity features should track log popularity - and should do so *within* a relation,
since pooled over relations a feature can correlate with popularity merely because relations
differ in both (capitals are popular and have short, familiar templates).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr

from knowgate.evaluation.bench.policy_results import per_group
from knowgate.evaluation.bench.summary import PopQABreakdowns, SparsityCorrelation
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.metrics import POPULARITY_BUCKETS, popularity_bucket
from knowgate.evaluation.reporting import finite
from knowgate.signals import feature_specs

MIN_RELATION_ROWS = 20


def popqa_rows(table: BenchTable) -> NDArray[np.bool_]:
    """Rows with a PopQA popularity."""
    return np.asarray(np.isfinite(table.labelled.popularity))


def breakdowns(
    table: BenchTable, decisions: Mapping[str, NDArray[np.bool_]]
) -> PopQABreakdowns | None:
    """Accuracy and retrieval rate of each policy's decisions per bucket and per relation."""
    rows = popqa_rows(table)
    if not rows.any():
        return None
    lab = table.labelled
    buckets = np.asarray([popularity_bucket(p) or "" for p in lab.popularity])
    order = [name for name, _, _ in POPULARITY_BUCKETS]
    by_bucket = {
        policy: dict(
            sorted(
                per_group(retrieve, table, buckets, rows).items(),
                key=lambda kv: order.index(kv[0]),
            )
        )
        for policy, retrieve in decisions.items()
    }
    by_relation = {
        policy: dict(
            sorted(
                per_group(retrieve, table, lab.relations, rows & (lab.relations != "")).items(),
                key=lambda kv: -kv[1].n,
            )
        )
        for policy, retrieve in decisions.items()
    }
    return PopQABreakdowns(by_bucket, by_relation)


def sparsity_popularity_correlations(table: BenchTable) -> dict[str, SparsityCorrelation]:
    """Spearman correlation of each sparsity feature with log popularity (pooled, within relation).

    *Within relation* is the row-weighted mean of per-relation Spearman correlations over
    relations with at least :data:`MIN_RELATION_ROWS` PopQA rows.
    """
    rows = popqa_rows(table)
    if rows.sum() < 3:
        return {}
    lab = table.labelled
    log_pop = np.log10(1.0 + lab.popularity[rows])
    relations = lab.relations[rows]
    specs = feature_specs()
    names = [n for n in lab.features if n in specs and specs[n].family == "sparsity"]
    big = [
        r for r in dict.fromkeys(relations.tolist()) if np.sum(relations == r) >= MIN_RELATION_ROWS
    ]
    out: dict[str, SparsityCorrelation] = {}
    for name in names:
        x = lab.features[name][rows]
        if np.ptp(x) == 0:
            continue
        rho, p = spearmanr(x, log_pop)
        within, weights = [], []
        for rel in big:
            m = relations == rel
            if np.ptp(x[m]) > 0 and np.ptp(log_pop[m]) > 0:
                within.append(float(spearmanr(x[m], log_pop[m])[0]))
                weights.append(int(m.sum()))
        out[name] = SparsityCorrelation(
            spearman=finite(float(rho)),
            p_value=finite(float(p)),
            spearman_within_relation=finite(float(np.average(within, weights=weights)))
            if within
            else None,
            relations=len(within),
        )
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1].spearman or 0.0)))
