"""The policies the benchmark compares, and each one's held-out predictions by cross-fitting.

Every fitted policy is a :class:`PolicyCandidate` - a name, what it reads (a feature matrix and
the stage it needs), where it is defined, its learner and any cost beyond the gate's own pass -
produced by a *policy family* (a function of the table). :data:`POLICY_FAMILIES` lists them;
adding a family to the benchmark is one function that yields candidates and one entry there. A
family whose inputs are not closed-book features (sampled answers, hidden states for a probe)
reads them from :attr:`BenchTable.extra <knowgate.evaluation.bench.table.BenchTable.extra>`,
plugs its own learner in, and declares what it costs beyond the gate's pass
(``extra_lm_calls``, ``extra_seconds``) so its LM calls and latency are honest.

:func:`held_out_policies` cross-fits every candidate on one set of outer folds
(:mod:`knowgate.evaluation.cross_fitting`) and adds the baselines that need no fit: never,
always and the oracle. Each policy's operating point is chosen per fold on its training rows'
out-of-fold p(known) and applied to the fold's held-out rows (:meth:`HeldOutPolicy.decide`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import GateStage, Outcome, policy_outcome
from knowgate.evaluation.cross_fitting import (
    FoldFit,
    Learner,
    Splits,
    cross_fit,
    inner_splits,
    logistic_learner,
    outer_splits,
)
from knowgate.evaluation.labelled import standard_feature_sets
from knowgate.evaluation.operating_rules import Rule
from knowgate.signals import feature_specs

log = logging.getLogger(__name__)

HEADLINE = "uncertainty+sparsity (prefill)"
"""The fused feature set of every model signal known before generation."""
POPULARITY = "popularity (s_pop)"
QUESTION_ONLY = "question-only"


@dataclass(frozen=True)
class PolicyCandidate:
    """A policy to cross-fit.

    Attributes:
        name: its name in reports.
        family: its family (the key of :data:`POLICY_FAMILIES` that produced it).
        stage: what it reads before deciding (fixes its LM calls and latency).
        features: names of the columns of ``x``.
        x: ``[n, k]`` inputs for every row of the table (any finite values where ``rows``).
        rows: where it is defined (popularity: PopQA rows only).
        learner: fits its score model on a training fold.
        extra_lm_calls: LM calls per question beyond the gate's (e.g. sampled answers).
        extra_seconds: seconds per question beyond the measured stages (scalar or per row).
    """

    name: str
    family: str
    stage: GateStage
    features: tuple[str, ...]
    x: NDArray[np.float64]
    rows: NDArray[np.bool_]
    learner: Learner = logistic_learner
    extra_lm_calls: float = 0.0
    extra_seconds: float | NDArray[np.float64] = 0.0


PolicyFamily = Callable[[BenchTable], Iterable[PolicyCandidate]]


def _stage(names: Sequence[str]) -> GateStage:
    specs = feature_specs()
    return "draft" if any(n in specs and specs[n].stage == "draft" for n in names) else "prefill"


def fused_sets(table: BenchTable) -> Iterator[PolicyCandidate]:
    """The calibration study's fused feature sets (uncertainty, sparsity, question-only, ...)."""
    lab = table.labelled
    everywhere = np.ones(table.n, dtype=bool)
    for name, names in standard_feature_sets(lab).items():
        yield PolicyCandidate(
            name, "fused", _stage(names), tuple(names), lab.matrix(names), everywhere
        )


def popularity(table: BenchTable) -> Iterator[PolicyCandidate]:
    """PopQA's subject page views (Mallen et al. 2023), on PopQA rows: an evaluation baseline."""
    lab = table.labelled
    rows = np.isfinite(lab.popularity)
    if rows.any():
        log_pop = np.log10(1.0 + np.where(rows, lab.popularity, 0.0))[:, None]
        yield PolicyCandidate(POPULARITY, "popularity", "prefill", ("log10_s_pop",), log_pop, rows)


def single_features(table: BenchTable) -> Iterator[PolicyCandidate]:
    """Each model signal alone: a 1-D threshold whose direction is learnt on training folds."""
    lab = table.labelled
    specs = feature_specs()
    everywhere = np.ones(table.n, dtype=bool)
    for name, values in lab.features.items():
        model_signal = name in specs and specs[name].family in ("sparsity", "uncertainty")
        if model_signal and np.ptp(values) > 0:
            yield PolicyCandidate(
                name, "single", _stage([name]), (name,), values[:, None], everywhere
            )


POLICY_FAMILIES: dict[str, PolicyFamily] = {
    "fused": fused_sets,
    "popularity": popularity,
    "single": single_features,
}
"""Every family of fitted policies the benchmark scores, in report order."""


@dataclass(frozen=True)
class HeldOutPolicy:
    """A policy's held-out predictions on the benchmark's questions.

    Attributes:
        name: the policy's name in reports.
        family: ``baseline`` (never, always), ``oracle``, or a :data:`POLICY_FAMILIES` key.
        stage: what it reads before deciding (see :data:`~knowgate.evaluation.both_branches.
            GateStage`).
        features: the features it reads.
        rows: where it is defined.
        score: ranking score, higher = more likely known (the learner's own probability for
            fitted policies; the label for the oracle); NaN outside ``rows``.
        p_known: calibrated held-out p(known) (NaN outside ``rows``); ``None`` for baselines.
        folds: per-fold fits of fitted policies.
        fixed_retrieve: the decisions of a policy without a threshold (never, always, oracle).
        extra_lm_calls: LM calls per question beyond the gate's.
        extra_seconds: seconds per question beyond the measured stages.
    """

    name: str
    family: str
    stage: GateStage
    features: tuple[str, ...]
    rows: NDArray[np.bool_]
    score: NDArray[np.float64] | None = None
    p_known: NDArray[np.float64] | None = None
    folds: tuple[FoldFit, ...] = ()
    fixed_retrieve: NDArray[np.bool_] | None = None
    extra_lm_calls: float = 0.0
    extra_seconds: float | NDArray[np.float64] = 0.0

    @property
    def fitted(self) -> bool:
        """Whether the policy has a threshold chosen per fold."""
        return bool(self.folds)

    def decide(self, rule: Rule, table: BenchTable) -> tuple[NDArray[np.bool_], list[float]]:
        """Held-out retrieve decisions, the cut of each fold chosen on its training rows only.

        Returns:
            ``(retrieve per row, threshold per fold)``; rows outside ``rows`` retrieve.
        """
        if self.fixed_retrieve is not None:
            return self.fixed_retrieve.copy(), []
        retrieve = np.ones(table.n, dtype=bool)
        cuts = []
        for fold in self.folds:
            t = rule(fold.p_train, table.cb_correct[fold.train], table.rag_correct[fold.train])
            retrieve[fold.test] = (fold.p_test < t) | (t >= 1.0)
            cuts.append(float(t))
        return retrieve, cuts

    def outcome(self, table: BenchTable, retrieve: NDArray[np.bool_]) -> Outcome:
        """The outcome of ``retrieve`` over the policy's rows, at the policy's cost."""
        extra = self.extra_seconds
        return policy_outcome(
            table.branches.subset(self.rows),
            retrieve[self.rows],
            stage=self.stage,
            extra_lm_calls=self.extra_lm_calls,
            extra_seconds=extra[self.rows] if isinstance(extra, np.ndarray) else extra,
        )


@dataclass
class HeldOutSet:
    """All policies' held-out predictions, the splits behind them, and what could not be fitted.

    Attributes:
        policies: name -> predictions, in report order.
        splits: the outer folds.
        skipped: name -> why a policy could not be fitted (too few correct answers, no PopQA).
    """

    policies: dict[str, HeldOutPolicy]
    splits: Splits
    skipped: dict[str, str] = field(default_factory=dict)


def baselines(table: BenchTable) -> dict[str, HeldOutPolicy]:
    """never, always and the oracle: policies without a fit."""
    y = table.cb_correct
    everywhere = np.ones(table.n, dtype=bool)
    return {
        "never": HeldOutPolicy(
            "never", "baseline", "none", (), everywhere, fixed_retrieve=np.zeros(table.n, bool)
        ),
        "always": HeldOutPolicy(
            "always", "baseline", "none", (), everywhere, fixed_retrieve=np.ones(table.n, bool)
        ),
        # A gate that reads the label: its cost is a gate's, its decisions the ceiling.
        "oracle": HeldOutPolicy(
            "oracle",
            "oracle",
            "prefill",
            (),
            everywhere,
            score=y.astype(np.float64),
            p_known=y.astype(np.float64),
            fixed_retrieve=y == 0,
        ),
    }


def cross_fit_candidate(
    candidate: PolicyCandidate,
    y: NDArray[np.int64],
    groups: NDArray[np.str_],
    splits: Splits,
    *,
    calibration: str,
    inner_folds: int,
    seed: int,
    shared_inner: Sequence[Splits] | None,
) -> HeldOutPolicy:
    """Cross-fit one candidate against labels ``y`` (the table's, or permuted ones).

    Raises:
        PolicyError: a training fold cannot be fitted.
    """
    fit = cross_fit(
        candidate.x,
        y,
        groups,
        candidate.features,
        splits,
        rows=candidate.rows,
        calibration=calibration,
        inner_folds=inner_folds,
        seed=seed,
        shared_inner=shared_inner,
        learner=candidate.learner,
    )
    return HeldOutPolicy(
        candidate.name,
        candidate.family,
        candidate.stage,
        candidate.features,
        candidate.rows,
        fit.score,
        fit.p_known,
        fit.folds,
        extra_lm_calls=candidate.extra_lm_calls,
        extra_seconds=candidate.extra_seconds,
    )


def candidates(table: BenchTable, families: Sequence[str]) -> list[PolicyCandidate]:
    """Every candidate of the named families, in family order.

    Raises:
        PolicyError: an unknown family name.
    """
    unknown = [f for f in families if f not in POLICY_FAMILIES]
    if unknown:
        raise PolicyError(f"unknown policy famil(ies) {unknown}; known: {list(POLICY_FAMILIES)}")
    return [c for f in families for c in POLICY_FAMILIES[f](table)]


def held_out_policies(
    table: BenchTable,
    *,
    folds: int = 5,
    calibration: str = "sigmoid",
    seed: int = 0,
    families: Sequence[str] = tuple(POLICY_FAMILIES),
    progress: bool = False,
) -> HeldOutSet:
    """Cross-fit every policy the benchmark compares, on one set of outer folds.

    Raises:
        PolicyError: too few correct (or wrong) closed-book answers to cross-validate at all.
    """
    from tqdm.auto import tqdm

    lab = table.labelled
    splits = outer_splits(lab.y, lab.groups, folds=folds, seed=seed)
    inner = min(folds, 5)
    shared = inner_splits(splits, lab.y, lab.groups, folds=inner, seed=seed)
    out = baselines(table)
    skipped: dict[str, str] = {}
    if "popularity" in families and not np.isfinite(lab.popularity).any():
        skipped[POPULARITY] = "no question has PopQA popularity (s_pop)"
    jobs = candidates(table, families)
    for candidate in tqdm(jobs, desc="cross-fitting policies", unit="policy", disable=not progress):
        try:
            out[candidate.name] = cross_fit_candidate(
                candidate,
                lab.y,
                lab.groups,
                splits,
                calibration=calibration,
                inner_folds=inner,
                seed=seed,
                shared_inner=shared,
            )
        except PolicyError as exc:
            skipped[candidate.name] = str(exc)
            log.warning("policy %s not fitted: %s", candidate.name, exc)
    return HeldOutSet(out, splits, skipped)
