"""The policies the benchmark compares, and each one's held-out predictions by cross-fitting.

Every fitted policy is a :class:`PolicyCandidate` - a name, what it reads (a feature matrix and
the stage it needs), where it is defined, its learner (or a recipe that chooses its inputs and
regularisation by inner cross-validation on the training folds) and any cost beyond the gate's
own pass - produced by a *policy family* (a function of the table). A method with a fixed rule
and nothing to fit (FLARE's ``min_prob`` 0.2, self-routing at P(yes) 0.5) is a
:class:`FixedCandidate`. :data:`POLICY_FAMILIES` lists the families; adding one to the benchmark
is one function that yields candidates and one entry there. A family whose inputs are not
closed-book features reads them from the table (:attr:`~knowgate.evaluation.bench.table.
BenchTable.arrays`: hidden states; :attr:`~knowgate.evaluation.bench.table.BenchTable.peers`:
sampled answers and the self-report prompt; ``extra``: anything else) and declares what it costs
beyond the gate's pass (``extra_lm_calls``, ``extra_seconds``) so its LM calls and latency are
honest.

The families: ``fused`` (the calibration study's fused feature sets, each choosing feature group
and ``C`` by inner CV), ``probe`` (hidden-state probes on the stored vectors, alone and stacked
with the prefill signals), ``peers`` (the field's gates: TARG, FLARE, sampling consistency,
self-routing), ``popularity`` and ``single`` (each model signal alone).

:func:`held_out_policies` cross-fits every candidate on one set of outer folds
(:mod:`knowgate.evaluation.cross_fitting`) and adds the baselines that need no fit: never,
always and the oracle. Each policy's operating point is chosen per fold on its training rows'
out-of-fold p(known) and applied to the fold's held-out rows (:meth:`HeldOutPolicy.decide`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import PolicyError
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.both_branches import GateStage, Outcome, policy_outcome
from knowgate.evaluation.cross_fitting import (
    FoldFit,
    Learner,
    Recipe,
    Splits,
    cross_fit,
    inner_splits,
    logistic_learner,
    outer_splits,
)
from knowgate.evaluation.labelled import standard_feature_sets
from knowgate.evaluation.operating_rules import Rule
from knowgate.policy.peers import (
    FLARE_FEATURE,
    FLARE_MIN_PROB,
    SAMPLE_AGREEMENT,
    SAMPLE_LEXICAL_SIMILARITY,
    SELF_REPORT_P_YES,
    TARG_ENTROPY,
    TARG_MARGIN,
)
from knowgate.policy.selection import FeatureGroups, HiddenStateProbe, StackedProbe
from knowgate.signals import feature_specs, vector_signal_name

log = logging.getLogger(__name__)

HEADLINE = "uncertainty+sparsity (prefill)"
"""The fused feature set of every model signal known before generation."""
UNSELECTED_HEADLINE = f"{HEADLINE} [every feature, C=1]"
"""The headline set without the inner-CV choice (the recipe before it): for comparison."""
POPULARITY = "popularity (s_pop)"
QUESTION_ONLY = "question-only"
PROBE = "probe (hidden state)"
PROBE_FUSED = "probe+uncertainty+sparsity (prefill)"
TARG = "TARG margin (draft)"
TARG_ENTROPY_POLICY = "TARG entropy (draft)"
FLARE_FIXED = f"FLARE (min prob < {FLARE_MIN_PROB:g})"
FLARE_CUT = "FLARE (min prob, cut by rule)"
SAMPLING = "sampling consistency (agreement)"
SAMPLING_LEXICAL = "sampling consistency (lexical)"
SELF_ROUTING_FIXED = "self-routing (P(yes) < 0.5)"
SELF_ROUTING_CUT = "self-routing (P(yes), cut by rule)"


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
        learner: fits its score model on a training fold (a plain learner, or a recipe that
            chooses its inputs on the fold's training rows).
        extra_lm_calls: LM calls per question beyond the gate's (e.g. sampled answers).
        extra_seconds: seconds per question beyond the measured stages (scalar or per row).
    """

    name: str
    family: str
    stage: GateStage
    features: tuple[str, ...]
    x: NDArray[Any]
    rows: NDArray[np.bool_]
    learner: Learner | Recipe = logistic_learner
    extra_lm_calls: float = 0.0
    extra_seconds: float | NDArray[np.float64] = 0.0


@dataclass(frozen=True)
class FixedCandidate:
    """A policy with a fixed rule: nothing to fit, the same decisions in every fold.

    Attributes:
        name: its name in reports.
        family: its family.
        stage: what it reads before deciding.
        features: what it reads.
        score: its ranking score (higher = more likely known), for AUROC and curves.
        retrieve: its decision per row.
        rows: where it is defined.
        extra_lm_calls: LM calls per question beyond the gate's.
        extra_seconds: seconds per question beyond the measured stages.
    """

    name: str
    family: str
    stage: GateStage
    features: tuple[str, ...]
    score: NDArray[np.float64]
    retrieve: NDArray[np.bool_]
    rows: NDArray[np.bool_]
    extra_lm_calls: float = 0.0
    extra_seconds: float | NDArray[np.float64] = 0.0


Candidate = PolicyCandidate | FixedCandidate
PolicyFamily = Callable[[BenchTable], Iterable[Candidate]]


def _stage(names: Sequence[str]) -> GateStage:
    specs = feature_specs()
    return "draft" if any(n in specs and specs[n].stage == "draft" for n in names) else "prefill"


def fused_sets(table: BenchTable) -> Iterator[PolicyCandidate]:
    """The calibration study's fused feature sets (uncertainty, sparsity, question-only, ...).

    Each chooses its feature group (or a single feature) and ``C`` by inner CV on the training
    folds (:class:`~knowgate.policy.selection.FeatureGroups`): the shipped recipe. The headline
    set is also fitted the way it was before that choice (every feature, ``C`` = 1).
    """
    lab = table.labelled
    everywhere = np.ones(table.n, dtype=bool)
    for name, names in standard_feature_sets(lab).items():
        x = lab.matrix(names)
        stage = _stage(names)
        yield PolicyCandidate(
            name, "fused", stage, tuple(names), x, everywhere, learner=FeatureGroups()
        )
        if name == HEADLINE:
            yield PolicyCandidate(UNSELECTED_HEADLINE, "fused", stage, tuple(names), x, everywhere)


def probe_sites(table: BenchTable) -> tuple[str, ...]:
    """The vector signals stored for probes, in the column order of :func:`probe_matrix`."""
    arrays = table.arrays
    if arrays is None:
        return ()
    return tuple(
        vector_signal_name(layer, position)
        for layer in arrays.probe_layers
        for position in arrays.positions
    )


def probe_matrix(table: BenchTable) -> NDArray[np.floating]:
    """``[n, sites * d]`` stored hidden states, one block per vector signal (a view, float16)."""
    assert table.arrays is not None
    hidden = table.arrays.probe_hidden
    return hidden.reshape(hidden.shape[0], -1)


def probes(table: BenchTable) -> Iterator[PolicyCandidate]:
    """Hidden-state probes on the gate's own prefill (no extra pass): alone, and stacked.

    The probe (Probing-RAG, Baek et al. 2025; Ji et al. 2024; HALT) chooses its layer, position
    and ``C`` by inner CV on the training folds; the stacked probe also combines its logit with
    the prefill's uncertainty and sparsity signals (groups and ``C`` chosen alike).
    """
    sites = probe_sites(table)
    if not sites:
        return
    everywhere = np.ones(table.n, dtype=bool)
    x = probe_matrix(table)
    yield PolicyCandidate(
        PROBE, "probe", "prefill", sites, x, everywhere, learner=HiddenStateProbe()
    )
    lab = table.labelled
    scalars = standard_feature_sets(lab).get(HEADLINE, [])
    if scalars:
        stacked = np.concatenate(
            [x.astype(np.float32), lab.matrix(scalars).astype(np.float32)], axis=1
        )
        yield PolicyCandidate(
            PROBE_FUSED,
            "probe",
            "prefill",
            (*sites, *scalars),
            stacked,
            everywhere,
            learner=StackedProbe(),
        )


def peers(table: BenchTable) -> Iterator[Candidate]:
    """The field's gates, on the questions their data exist for (see :mod:`knowgate.policy.peers`).

    Each calibrated variant is a one-signal policy cross-fitted like the rest (its cut chosen by
    the same operating rule on training folds); FLARE's ``min_prob`` 0.2 and self-routing's
    P(yes) 0.5 are also scored as the fixed rules their implementations ship.
    """
    lab = table.labelled
    everywhere = np.ones(table.n, dtype=bool)
    for name, feature in ((TARG, TARG_MARGIN), (TARG_ENTROPY_POLICY, TARG_ENTROPY)):
        if feature in lab.features:
            values = lab.features[feature][:, None]
            yield PolicyCandidate(name, "peer", "draft", (feature,), values, everywhere)
    if FLARE_FEATURE in lab.features:
        min_prob = lab.features[FLARE_FEATURE]
        yield FixedCandidate(
            FLARE_FIXED,
            "peer",
            "draft",
            (FLARE_FEATURE,),
            min_prob,
            min_prob < FLARE_MIN_PROB,
            everywhere,
        )
        yield PolicyCandidate(
            FLARE_CUT, "peer", "draft", (FLARE_FEATURE,), min_prob[:, None], everywhere
        )
    signals = table.peers
    if signals is None or not signals.rows.any():
        return
    rows = signals.rows
    sampled = np.where(rows, signals.sample_seconds, 0.0)
    reported = np.where(rows, signals.self_report_seconds, 0.0)
    for name, feature in (
        (SAMPLING, SAMPLE_AGREEMENT),
        (SAMPLING_LEXICAL, SAMPLE_LEXICAL_SIMILARITY),
    ):
        values = np.where(rows, signals.features[feature], 0.0)
        yield PolicyCandidate(
            name,
            "peer",
            "draft",
            (feature,),
            values[:, None],
            rows,
            extra_lm_calls=float(signals.samples),
            extra_seconds=sampled,
        )
    p_yes = np.where(rows, signals.features[SELF_REPORT_P_YES], 0.0)
    yield FixedCandidate(
        SELF_ROUTING_FIXED,
        "peer",
        "none",
        (SELF_REPORT_P_YES,),
        p_yes,
        p_yes < 0.5,
        rows,
        extra_lm_calls=1.0,
        extra_seconds=reported,
    )
    yield PolicyCandidate(
        SELF_ROUTING_CUT,
        "peer",
        "none",
        (SELF_REPORT_P_YES,),
        p_yes[:, None],
        rows,
        extra_lm_calls=1.0,
        extra_seconds=reported,
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
    "probe": probes,
    "peers": peers,
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
            fitted policies; the raw signal of a fixed rule; the label for the oracle); NaN
            outside ``rows``.
        p_known: calibrated held-out p(known) (NaN outside ``rows``); ``None`` for baselines
            and fixed rules.
        folds: per-fold fits of fitted policies.
        fixed_retrieve: the decisions of a policy without a fitted threshold (never, always,
            oracle, fixed rules).
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

    @property
    def choices(self) -> tuple[str, ...]:
        """What the recipe chose in each outer fold (empty for plain learners)."""
        return tuple(f.choice.label for f in self.folds if f.choice is not None)

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


def fixed_policy(candidate: FixedCandidate) -> HeldOutPolicy:
    """A fixed rule's decisions and score (nothing is fitted)."""
    score = np.where(candidate.rows, candidate.score, np.nan)
    return HeldOutPolicy(
        candidate.name,
        candidate.family,
        candidate.stage,
        candidate.features,
        candidate.rows,
        score,
        None,
        fixed_retrieve=np.where(candidate.rows, candidate.retrieve, True),
        extra_lm_calls=candidate.extra_lm_calls,
        extra_seconds=candidate.extra_seconds,
    )


def candidates(table: BenchTable, families: Sequence[str]) -> list[Candidate]:
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
    jobs: Sequence[Candidate] | None = None,
) -> HeldOutSet:
    """Cross-fit every policy the benchmark compares, on one set of outer folds.

    ``jobs`` are the candidates when already built (:func:`candidates` of ``families``).

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
    jobs = list(jobs) if jobs is not None else candidates(table, families)
    for candidate in tqdm(jobs, desc="cross-fitting policies", unit="policy", disable=not progress):
        if isinstance(candidate, FixedCandidate):
            out[candidate.name] = fixed_policy(candidate)
            continue
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
