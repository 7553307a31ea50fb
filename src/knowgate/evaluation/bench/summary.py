"""The benchmark's typed summary: what ``results.json`` holds and ``summary.md`` renders.

Every policy row is held-out (cross-fitted; cuts chosen on training folds). Latency columns are
the mean wall time per question as the router serves the request, built from per-question shares
of the batched stages as measured in the benchmark run (see
:mod:`knowgate.evaluation.both_branches`); they are not per-request timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knowgate.evaluation.bench.curves import CurveComparison
from knowgate.evaluation.branches.timing import ClosedBookTiming
from knowgate.evaluation.reporting import Interval, to_jsonable


@dataclass(frozen=True)
class RankingMetrics:
    """How well a policy's held-out score ranks closed-book correctness, and its calibration.

    Attributes:
        auroc: pooled AUROC.
        auroc_ci95: its bootstrap interval (``None`` without bootstrap).
        auroc_within_relation: over pairs within a PopQA relation only.
        auroc_within_dataset: over pairs within a dataset only.
        ece: expected calibration error of p(known) (15 bins).
        brier: Brier score of p(known).
    """

    auroc: float | None
    auroc_ci95: Interval | None
    auroc_within_relation: float | None
    auroc_within_dataset: float | None
    ece: float | None
    brier: float | None


@dataclass(frozen=True)
class GroupOutcome:
    """A policy's held-out decisions on one group (dataset, relation, popularity bucket).

    Attributes:
        n: questions.
        accuracy: In-Accuracy of the answers served.
        retrieval_rate: retriever calls per question.
        auroc: AUROC of the policy's score in the group (``None`` when not applicable).
    """

    n: int
    accuracy: float | None
    retrieval_rate: float | None
    auroc: float | None = None


@dataclass(frozen=True)
class PolicyResult:
    """One policy's held-out decisions, scored over the rows where it is defined.

    Attributes:
        name: the policy.
        family: ``baseline``, ``oracle``, ``random`` or a policy family.
        stage: what it reads before deciding (``none``, ``prefill``, ``draft``).
        n_features: inputs it reads.
        n: questions scored.
        accuracy: In-Accuracy with a bootstrap interval.
        accuracy_minus_always: paired difference from always retrieving, same rows.
        accuracy_minus_random: paired difference from random gating at the policy's own
            retrieval rate (expected accuracy; ``None`` for baselines).
        exact_match: mean exact match.
        f1: mean token F1.
        retrieval_rate: retriever calls per question.
        lm_calls_per_question: prompts through the local model per question.
        skip_recall: share of the closed-book-correct questions the policy skips (Wilson
            interval; expected value for random gating).
        skip_precision: share of skipped questions answered correctly closed-book (``None`` when
            it skips none).
        mean_seconds: mean wall time per question (shares of batched stages, see the module).
        total_seconds: summed wall time.
        thresholds_per_fold: the cut each outer fold chose on its training rows.
        ranking: ranking and calibration of its score (``None`` without a score).
        per_dataset: accuracy, retrieval rate and AUROC per dataset.
        choices_per_fold: what its recipe chose by inner CV on each outer fold's training rows
            (feature group and ``C``; a probe's vector signal and ``C``).
        extra_lm_calls: LM calls per question beyond the gate's (sampled answers, a second
            prompt).
        extra_seconds: mean seconds per question those extra calls cost (measured in the
            peers branch).
    """

    name: str
    family: str
    stage: str
    n_features: int
    n: int
    accuracy: Interval
    accuracy_minus_always: Interval
    accuracy_minus_random: Interval | None
    exact_match: float | None
    f1: float | None
    retrieval_rate: float
    lm_calls_per_question: float
    skip_recall: Interval
    skip_precision: Interval | None
    mean_seconds: float
    total_seconds: float
    thresholds_per_fold: tuple[float, ...] = ()
    ranking: RankingMetrics | None = None
    per_dataset: dict[str, GroupOutcome] = field(default_factory=dict)
    choices_per_fold: tuple[str, ...] = ()
    extra_lm_calls: float = 0.0
    extra_seconds: float = 0.0


@dataclass(frozen=True)
class BranchSummary:
    """Both branches of one dataset (or all questions).

    Attributes:
        n: questions.
        closed_book_accuracy: In-Accuracy closed-book (= never).
        closed_book_em: exact match closed-book.
        closed_book_f1: token F1 closed-book.
        retrieval_accuracy: In-Accuracy with retrieval (= always).
        retrieval_em: exact match with retrieval.
        retrieval_f1: token F1 with retrieval.
        oracle_accuracy: the better branch per question.
        oracle_retrieval_rate: share answered wrongly closed-book.
        closed_book_right_retrieval_wrong: questions passages spoil.
        closed_book_wrong_retrieval_right: questions passages fix.
        evidence_in_prompt: share of questions with gold evidence whose prompt held one.
        questions_with_evidence: questions with gold evidence listed.
        mean_closed_book_seconds: prefill + decode (never).
        mean_gated_closed_book_seconds: prefill + signals + decode (a gate that skips).
        mean_gated_retrieval_seconds: prefill + signals + retrieval + answer (a gate that
            retrieves).
        mean_plain_rag_seconds: retrieval + answer (always).
    """

    n: int
    closed_book_accuracy: float | None
    closed_book_em: float | None
    closed_book_f1: float | None
    retrieval_accuracy: float | None
    retrieval_em: float | None
    retrieval_f1: float | None
    oracle_accuracy: float | None
    oracle_retrieval_rate: float | None
    closed_book_right_retrieval_wrong: int
    closed_book_wrong_retrieval_right: int
    evidence_in_prompt: float | None
    questions_with_evidence: int
    mean_closed_book_seconds: float | None
    mean_gated_closed_book_seconds: float | None
    mean_gated_retrieval_seconds: float | None
    mean_plain_rag_seconds: float | None


@dataclass(frozen=True)
class CurveSummary:
    """Accuracy-against-retrieval-rate curves compared on a grid of rates.

    Attributes:
        rates_from: the lowest retrieval rate compared.
        mean_accuracy: curve -> its mean accuracy over the compared rates.
        vs_random: curve -> comparison with random gating.
        headline_vs: curve -> the headline curve compared with it.
    """

    rates_from: float
    mean_accuracy: dict[str, float]
    vs_random: dict[str, CurveComparison]
    headline_vs: dict[str, CurveComparison]


@dataclass(frozen=True)
class CurveTargets:
    """The headline curve against random gating, the single features and question-only.

    Attributes:
        rates_from: the lowest retrieval rate compared.
        above_random_at_every_rate: strictly above the diagonal at every compared rate.
        share_of_rates_above_random: share of compared rates where it is strictly above.
        min_difference_to_random: its largest shortfall.
        mean_difference_to_random: paired-bootstrap mean difference (area between the curves).
        above_every_single_feature_on_average: above every single feature's curve on average.
        single_features_not_beaten_on_average: the single features it does not beat.
        single_features_compared: how many were compared.
        mean_difference_to_question_only: paired-bootstrap mean difference to question-only.
    """

    rates_from: float
    above_random_at_every_rate: bool
    share_of_rates_above_random: float | None
    min_difference_to_random: float | None
    mean_difference_to_random: Interval
    above_every_single_feature_on_average: bool
    single_features_not_beaten_on_average: tuple[str, ...]
    single_features_compared: int
    mean_difference_to_question_only: Interval | None

    @property
    def above_question_only_on_average(self) -> bool | None:
        """Whether the headline curve is above question-only on average."""
        d = self.mean_difference_to_question_only
        return None if d is None or d.estimate is None else d.estimate > 0


@dataclass(frozen=True)
class Targets:
    """The benchmark's targets, for the headline policy at the default operating rule.

    The savings target is stated in bounded quantities: *skip recall* (share of the questions
    the model answers correctly closed-book that the gate skips) and *skip precision* (share of
    skipped questions answered correctly closed-book; random gating's is the closed-book
    accuracy).

    Attributes:
        policy: the headline policy.
        operating_rule: the default operating rule.
        accuracy: its held-out accuracy.
        always_accuracy: always retrieving's.
        accuracy_minus_always: paired difference with its interval.
        accuracy_within_1pt_of_always: the point estimate is within one point of always.
        accuracy_minus_random: paired difference from random gating at the same rate.
        above_random_at_same_rate: that difference's interval lies above 0.
        retrieval_rate: its retrieval rate.
        skip_recall: its skip recall.
        skip_recall_at_least_half: the point estimate is at least 0.5 (skips at least half of
            what the model knows).
        skip_precision: its skip precision.
        closed_book_accuracy: random gating's skip precision.
        skip_precision_above_random: the skip-precision interval lies above the closed-book
            accuracy.
        mean_seconds: its mean wall time per question.
        always_mean_seconds: always retrieving's (plain RAG).
        seconds_vs_always: the ratio.
        curve: the curve targets over all retrieval rates.
        curve_high_rates: the same over rates >= 0.8.
    """

    policy: str
    operating_rule: str
    accuracy: float | None
    always_accuracy: float | None
    accuracy_minus_always: Interval
    accuracy_within_1pt_of_always: bool
    accuracy_minus_random: Interval | None
    above_random_at_same_rate: bool
    retrieval_rate: float
    skip_recall: Interval
    skip_recall_at_least_half: bool
    skip_precision: Interval | None
    closed_book_accuracy: float | None
    skip_precision_above_random: bool
    mean_seconds: float
    always_mean_seconds: float
    seconds_vs_always: float | None
    curve: CurveTargets | None
    curve_high_rates: CurveTargets | None


@dataclass(frozen=True)
class SuggestedOperatingPoint:
    """Every rule's cut fitted on all questions' held-out p(known), for shipping.

    Attributes:
        rule: the default rule.
        fitted_on: what the cuts were fitted on.
        threshold: the default rule's cut.
        operating_point: it as an operating point string.
        cuts_by_rule: every rule's cut.
        break_even_intercept: ``a`` of the retrieval-accuracy curve.
        break_even_slope: ``b`` of it.
    """

    rule: str
    fitted_on: str
    threshold: float
    operating_point: str
    cuts_by_rule: dict[str, float]
    break_even_intercept: float
    break_even_slope: float


@dataclass(frozen=True)
class LeftOutDataset:
    """The shipped recipe on one dataset: fitted without it, and fitted in-distribution.

    Attributes:
        dataset: the dataset.
        n: its questions.
        training_questions: questions the leave-one-out fit was trained on (the other
            datasets, minus any question that also occurs in this one).
        threshold: the leave-one-out policy's cut (chosen on its training data).
        unseen: the leave-one-out policy's decisions on this dataset.
        in_distribution: the same recipe cross-fitted on all datasets (this one's rows scored by
            fold fits that saw other questions of this dataset).
        always: always retrieving on this dataset.
    """

    dataset: str
    n: int
    training_questions: int
    threshold: float
    unseen: PolicyResult
    in_distribution: PolicyResult
    always: PolicyResult


@dataclass(frozen=True)
class LeaveOneDatasetOut:
    """The shipped recipe on traffic unlike its calibration data.

    Attributes:
        recipe: what is fitted (features, model, calibration, operating rule).
        features: the recipe's features.
        datasets: one entry per left-out dataset.
        pooled_unseen: every dataset's leave-one-out decisions together.
        pooled_in_distribution: the in-distribution decisions together.
        pooled_always: always retrieving on all questions.
        skipped: dataset -> why it could not be left out (e.g. only one dataset).
    """

    recipe: str
    features: tuple[str, ...]
    datasets: dict[str, LeftOutDataset]
    pooled_unseen: PolicyResult | None
    pooled_in_distribution: PolicyResult | None
    pooled_always: PolicyResult | None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NullPolicy:
    """One policy cross-fitted on permuted labels.

    Attributes:
        folds: per outer fold, the AUROC over pairs of its held-out questions within a dataset
            (exactly null without a leak; see :mod:`~knowgate.evaluation.bench.null_check`),
            with a Bonferroni-adjusted normal interval.
        auroc: the pooled held-out AUROC (for reference; not a valid null test).
        contains_half: every fold's interval contains 0.5.
    """

    folds: tuple[Interval, ...]
    auroc: float | None
    contains_half: bool | None


@dataclass(frozen=True)
class NullCheck:
    """Cross-fitting on labels permuted within each dataset: a guard against leakage.

    Attributes:
        permutation: how the labels were permuted.
        confidence: the family-wise confidence of the intervals (Bonferroni over every fold
            of every policy).
        policies: policy -> its null AUROC.
        passed: every interval contains 0.5.
    """

    permutation: str
    confidence: float
    policies: dict[str, NullPolicy]
    passed: bool


@dataclass(frozen=True)
class SparsityCorrelation:
    """A sparsity feature's Spearman correlation with log popularity (PopQA rows).

    Attributes:
        spearman: pooled over PopQA rows.
        p_value: its p-value.
        spearman_within_relation: row-weighted mean of per-relation correlations.
        relations: relations with enough rows.
    """

    spearman: float | None
    p_value: float | None
    spearman_within_relation: float | None
    relations: int


@dataclass(frozen=True)
class PopQABreakdowns:
    """Held-out decisions of the main policies per popularity bucket and per relation."""

    per_popularity_bucket: dict[str, dict[str, GroupOutcome]]
    per_relation: dict[str, dict[str, GroupOutcome]]


@dataclass(frozen=True)
class FieldRow:
    """One method in the AdaRAGUE-style table, on the rows every method has.

    Attributes:
        method: the policy.
        group: ``knowgate``, ``peer`` or ``baseline``.
        stage: what it reads before deciding.
        n: questions.
        accuracy: In-Accuracy with a bootstrap interval.
        retrieval_calls: RC, retriever calls per question.
        lm_calls: LMC, LM calls per question (a single-pass gate: 1 + RC).
        auroc: pooled AUROC of its score (bootstrap interval).
        auroc_within_relation: over pairs within a PopQA relation (bootstrap interval).
        auroc_within_dataset: over pairs within a dataset (bootstrap interval).
        skip_recall: share of the closed-book-correct questions it skips (Wilson).
        skip_precision: share of its skips that are closed-book-correct (Wilson).
        mean_seconds: mean wall time per question as served.
        extra_seconds: mean seconds of its own extra model calls per question.
        seconds_minus_always: its mean wall time minus plain RAG's, same questions.
        choices_per_fold: what its recipe chose per outer fold.
    """

    method: str
    group: str
    stage: str
    n: int
    accuracy: Interval
    retrieval_calls: float
    lm_calls: float
    auroc: Interval | None
    auroc_within_relation: Interval | None
    auroc_within_dataset: Interval | None
    skip_recall: Interval
    skip_precision: Interval | None
    mean_seconds: float
    extra_seconds: float
    seconds_minus_always: float
    choices_per_fold: tuple[str, ...] = ()


@dataclass(frozen=True)
class Versus:
    """A knowgate policy against a peer on the same questions (paired bootstrap intervals).

    Attributes:
        knowgate: the knowgate policy.
        peer: the peer.
        auroc_difference: knowgate minus peer AUROC.
        curve_difference: mean accuracy difference between their accuracy-vs-retrieval-rate
            curves over rates 0.01-0.99 (accuracy at equal retrieval rate, averaged).
        curve_difference_high_rates: the same over rates >= 0.8.
        auroc_verdict: ``above`` (interval above 0), ``below`` (under 0) or ``matches``.
        accuracy_verdict: the same for ``curve_difference``.
    """

    knowgate: str
    peer: str
    auroc_difference: Interval
    curve_difference: Interval
    curve_difference_high_rates: Interval
    auroc_verdict: str
    accuracy_verdict: str


@dataclass(frozen=True)
class FieldComparison:
    """knowgate's policies against the field's methods, AdaRAGUE-style, on common questions.

    Attributes:
        n: questions every method in the table has (the peers branch's sample).
        datasets: questions per dataset among them.
        operating_rule: the rule every method's cut was chosen by (on its training folds).
        rows: method -> its row.
        versus: every compared knowgate policy against every peer.
        best_single_pass: the knowgate policy without extra LM calls whose held-out AUROC is
            highest here (chosen after the fact on these numbers: read its row with that in
            mind; the comparisons cover every listed knowgate policy).
        above_random_at_every_rate: knowgate policy -> whether its curve on these questions
            lies strictly above random gating at every rate 0.01-0.99.
        not_in_table: method -> why it is not in the table (e.g. popularity: PopQA only).
    """

    n: int
    datasets: dict[str, int]
    operating_rule: str
    rows: dict[str, FieldRow]
    versus: tuple[Versus, ...]
    best_single_pass: str | None
    above_random_at_every_rate: dict[str, bool]
    not_in_table: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerStudy:
    """Where the signal lives: held-out AUROC by layer and prompt position.

    Attributes:
        positions: the prompt positions (``prompt_end`` is a template token for chat prompts).
        sparsity_layers: the captured blocks.
        sparsity_auroc: ``{site}_{metric}`` -> position -> AUROC per block; each outer fold
            chooses the direction on its training rows and scores its held-out rows, pooled.
        best_sparsity: position -> the best (metric, block, AUROC).
        probe_layers: the blocks whose hidden states are stored.
        probe_auroc: position -> a probe's AUROC per stored block (``C`` = ``probe_c``): the
            out-of-fold AUROC on each outer fold's training rows (every row scored by an inner
            model that did not see it), averaged over the outer folds; ``None`` without probes.
        probe_c: the probe's ``C`` for this study.
        best_probe: position -> the best (block, AUROC).
    """

    positions: tuple[str, ...]
    sparsity_layers: tuple[int, ...]
    sparsity_auroc: dict[str, dict[str, list[float | None]]]
    best_sparsity: dict[str, tuple[str, int, float]]
    probe_layers: tuple[int, ...]
    probe_auroc: dict[str, list[float | None]] | None
    probe_c: float | None
    best_probe: dict[str, tuple[int, float]]


@dataclass(frozen=True)
class UnseenAuroc:
    """A score's AUROC on one dataset: fitted without it, and fitted in distribution.

    Attributes:
        unseen: fitted (or its direction chosen) on the other datasets only.
        in_distribution: the cross-fitted held-out score (pooled folds over all datasets).
    """

    unseen: float | None
    in_distribution: float | None


@dataclass(frozen=True)
class LeaveOneDatasetOutAuroc:
    """Whether each signal's and policy's ranking holds on a dataset it was not fitted on.

    Attributes:
        datasets: the datasets.
        policies: policy -> dataset (and ``all``, pooling the left-out scores) -> AUROCs.
        signals: single model signal -> dataset -> AUROCs (direction chosen without it).
        skipped: what could not be scored, and why.
    """

    datasets: tuple[str, ...]
    policies: dict[str, dict[str, UnseenAuroc]]
    signals: dict[str, dict[str, UnseenAuroc]]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """What was run, where, and how long it took (filled in by ``knowgate bench``).

    Attributes:
        command: the exact command line.
        date: ISO date and time (UTC).
        machine: platform, processor, cores, torch version and threads.
        model: the model as given.
        datasets: per dataset: name, path, content hash, rows, digest of row ids.
        knowledge_base: its directory.
        knowledge_base_documents: documents in it.
        k: passages per question.
        closed_book_retiming: per dataset, the re-timing of the closed-book stages.
        seconds: wall time of each phase.
        both_branches: the both-branch files written.
        peers: the peers branch: per dataset the questions it ran (``None``: not run).
    """

    command: str
    date: str
    machine: dict[str, Any]
    model: str
    datasets: list[dict[str, Any]]
    knowledge_base: str
    knowledge_base_documents: int
    k: int
    closed_book_retiming: dict[str, ClosedBookTiming]
    seconds: dict[str, float]
    both_branches: list[str]
    peers: dict[str, int] | None = None


@dataclass
class BenchmarkSummary:
    """Everything ``results.json`` holds (``run`` is set by the command that ran it)."""

    model_id: str
    n_questions: int
    folds: int
    seed: int
    calibration: str
    bootstrap_resamples: int
    operating_rule: str
    headline_policy: str
    latency: str
    branches: dict[str, BranchSummary]
    policies: dict[str, PolicyResult]
    skipped_policies: dict[str, str]
    operating_points: dict[str, PolicyResult]
    suggested_default_operating_point: SuggestedOperatingPoint | None
    curves: CurveSummary | None
    curves_high_rates: CurveSummary | None
    popqa_curves: CurveSummary | None
    per_dataset: dict[str, dict[str, GroupOutcome]]
    popqa: PopQABreakdowns | None
    sparsity_vs_log_popularity: dict[str, SparsityCorrelation]
    targets: Targets | None
    leave_one_dataset_out: LeaveOneDatasetOut | None
    null_check: NullCheck | None
    field_comparison: FieldComparison | None = None
    layers: LayerStudy | None = None
    leave_one_dataset_out_auroc: LeaveOneDatasetOutAuroc | None = None
    run: RunRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``results.json``)."""
        out: dict[str, Any] = to_jsonable(self)
        return out
