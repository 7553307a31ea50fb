"""Writes a benchmark to disk: ``results.json``, ``summary.md``, ``curves.csv`` and PNG figures.

Everything is rendered from the typed :class:`~knowgate.evaluation.bench.summary.BenchmarkSummary`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowgate.evaluation.bench.policies import HEADLINE, POPULARITY
from knowgate.evaluation.bench.runner import RANDOM_AT_HEADLINE, BenchmarkResult
from knowgate.evaluation.bench.summary import (
    BenchmarkSummary,
    CurveSummary,
    CurveTargets,
    FieldComparison,
    GroupOutcome,
    LayerStudy,
    LeaveOneDatasetOut,
    LeaveOneDatasetOutAuroc,
    NullCheck,
    PolicyResult,
    UnseenAuroc,
)
from knowgate.evaluation.labelled import PLOTTED_SETS
from knowgate.evaluation.metrics import ECE_BINS, reliability_bins
from knowgate.evaluation.reporting import fmt, fmt_interval, md_table
from knowgate.jsonio import atomic_write_text

MAIN_ORDER = ("never", "always", RANDOM_AT_HEADLINE, "oracle")
TOP_SINGLES = 10

OUTCOME_HEADERS = [
    "In-Acc [95% CI]",
    "minus always [95% CI]",
    "minus random at same rate [95% CI]",
    "retrieval rate",
    "skip recall [95% CI]",
    "skip precision [95% CI]",
    "LM calls/q",
    "s/question",
]
POLICY_HEADERS = [
    "policy",
    "stage",
    "n",
    *OUTCOME_HEADERS,
    "EM",
    "F1",
    "AUROC [95% CI]",
    "AUROC within rel.",
    "AUROC within dataset",
    "ECE",
    "Brier",
]


def _breakdown_table(
    label: str, groups: Mapping[str, Mapping[str, GroupOutcome]], policies: Sequence[str]
) -> str:
    """Rows = groups (popularity buckets, relations), cells = accuracy / retrieval rate."""
    first = groups[policies[0]]
    return md_table(
        [label, "n", *policies],
        [
            [
                g,
                first[g].n,
                *[
                    f"{fmt(groups[p][g].accuracy)} / {fmt(groups[p][g].retrieval_rate, 2)}"
                    for p in policies
                ],
            ]
            for g in first
        ],
    )


def ordered_policies(summary: BenchmarkSummary, top_singles: int = TOP_SINGLES) -> list[str]:
    """Report order: baselines and oracle, fitted families, the best single features."""
    policies = summary.policies
    main = [p for p in MAIN_ORDER if p in policies]
    rest = [k for k, v in policies.items() if k not in main and v.family != "single"]
    singles = sorted(
        (k for k, v in policies.items() if v.family == "single"),
        key=lambda k: -((policies[k].ranking and policies[k].ranking.auroc) or 0.0),  # type: ignore[union-attr]
    )
    return main + rest + singles[:top_singles]


def outcome_cells(p: PolicyResult) -> list[Any]:
    """The cells of :data:`OUTCOME_HEADERS`."""
    return [
        fmt_interval(p.accuracy),
        fmt_interval(p.accuracy_minus_always, signed=True),
        fmt_interval(p.accuracy_minus_random, signed=True),
        p.retrieval_rate,
        fmt_interval(p.skip_recall),
        fmt_interval(p.skip_precision),
        p.lm_calls_per_question,
        p.mean_seconds,
    ]


def _policy_rows(policies: Mapping[str, PolicyResult], names: Sequence[str]) -> list[list[Any]]:
    rows = []
    for name in names:
        p = policies[name]
        r = p.ranking
        rows.append(
            [
                f"**{name}**" if name == HEADLINE else name,
                p.stage,
                p.n,
                *outcome_cells(p),
                p.exact_match,
                p.f1,
                "-" if r is None else (fmt_interval(r.auroc_ci95) if r.auroc_ci95 else r.auroc),
                None if r is None else r.auroc_within_relation,
                None if r is None else r.auroc_within_dataset,
                None if r is None else r.ece,
                None if r is None else r.brier,
            ]
        )
    return rows


def _header(s: BenchmarkSummary) -> list[str]:
    run = s.run
    sizes = ", ".join(f"{d['name']} {d['n']}" for d in run.datasets) if run else ""
    datasets = f" ({sizes})" if sizes else ""
    out = [
        f"# Benchmark: {s.model_id}",
        "",
        f"{s.n_questions} questions{datasets}; knowledge base "
        f"`{run.knowledge_base if run else '-'}`, k = {run.k if run else '-'}; "
        f"{s.folds}-fold grouped, stratified cross-fitting (seed {s.seed}), calibration "
        f"{s.calibration}; operating rule **{s.operating_rule}** (each fold's cut chosen on its "
        "training folds). Intervals: bootstrap 95% (percentile); skip recall and precision: "
        "Wilson 95%.",
        "",
        f"**Latency** (every *s/question* column): {s.latency}",
        "",
    ]
    if run:
        out += ["```bash", run.command, "```", ""]
    return out


def _branches_section(s: BenchmarkSummary) -> list[str]:
    return [
        "## Both branches",
        "",
        md_table(
            [
                "dataset",
                "n",
                "closed-book In-Acc",
                "with retrieval",
                "oracle",
                "oracle retrieval rate",
                "evidence in prompt",
                "cb right, rag wrong",
                "s/q never",
                "s/q always (plain RAG)",
                "s/q gate, skipped",
                "s/q gate, retrieved",
            ],
            [
                [
                    name,
                    b.n,
                    b.closed_book_accuracy,
                    b.retrieval_accuracy,
                    b.oracle_accuracy,
                    b.oracle_retrieval_rate,
                    b.evidence_in_prompt,
                    b.closed_book_right_retrieval_wrong,
                    b.mean_closed_book_seconds,
                    b.mean_plain_rag_seconds,
                    b.mean_gated_closed_book_seconds,
                    b.mean_gated_retrieval_seconds,
                ]
                for name, b in s.branches.items()
            ],
        ),
        "",
        "*evidence in prompt*: share of questions with gold evidence passages whose prompt held "
        "one. *never* = prefill + decode; *always* = retrieval + answer with passages; a gate "
        "pays prefill + signals, then decode (skipped) or retrieval + answer (retrieved).",
        "",
    ]


def _policies_section(s: BenchmarkSummary) -> list[str]:
    out = [
        "## Policies at the default operating point (held-out)",
        "",
        "*skip recall*: share of the questions answered correctly closed-book that the policy "
        "skips; *skip precision*: share of the skipped questions answered correctly "
        "closed-book (random gating's is the closed-book accuracy). *minus random*: paired "
        "difference from random gating at the policy's own retrieval rate.",
        "",
        md_table(POLICY_HEADERS, _policy_rows(s.policies, ordered_policies(s))),
        "",
        "Popularity is scored on PopQA rows only (cross-fitted like the rest). Single features: "
        f"the {TOP_SINGLES} with the highest held-out AUROC (all in `results.json`).",
        "",
    ]
    if s.skipped_policies:
        out += [
            "Not fitted: " + "; ".join(f"{k} ({v})" for k, v in s.skipped_policies.items()),
            "",
        ]
    if s.operating_points:
        out += [
            f"## Operating points of the {HEADLINE} policy (held-out)",
            "",
            md_table(
                ["rule (cut chosen on training folds)", *OUTCOME_HEADERS, "cut per fold"],
                [
                    [name, *outcome_cells(p), ", ".join(fmt(t) for t in p.thresholds_per_fold)]
                    for name, p in s.operating_points.items()
                ],
            ),
            "",
        ]
    sug = s.suggested_default_operating_point
    if sug:
        cuts = ", ".join(f"{k} `{v:.4f}`" for k, v in sug.cuts_by_rule.items())
        out += [
            f"Cuts fitted on all questions' held-out p(known): {cuts}. Suggested default "
            f"(**{sug.rule}**): `{sug.operating_point}` - fitted on every dataset, so its "
            "held-out figure is the leave-one-dataset-out table, not this one. Break-even's "
            f"retrieval-accuracy curve: logit P = {sug.break_even_intercept:.4f} + "
            f"{sug.break_even_slope:.4f} logit p.",
            "",
        ]
    return out


def _lodo_section(lodo: LeaveOneDatasetOut | None) -> list[str]:
    if lodo is None:
        return []
    out = [
        "## The shipped recipe on unseen datasets (leave one dataset out)",
        "",
        f"Recipe: {lodo.recipe}. For each dataset, the recipe is fitted on the other datasets "
        "(questions shared with the left-out dataset dropped) and applied to it; "
        "*in-distribution* is the same recipe cross-fitted on pooled folds of all datasets.",
        "",
    ]
    if lodo.datasets:
        rows = []
        for name, d in lodo.datasets.items():
            for label, p in (
                ("unseen", d.unseen),
                ("in-distribution", d.in_distribution),
                ("always", d.always),
            ):
                rows.append([name if label == "unseen" else "", label, p.n, *outcome_cells(p)])
        for label, pooled in (
            ("unseen", lodo.pooled_unseen),
            ("in-distribution", lodo.pooled_in_distribution),
            ("always", lodo.pooled_always),
        ):
            if pooled is not None:
                first = "all" if label == "unseen" else ""
                rows.append([first, label, pooled.n, *outcome_cells(pooled)])
        out += [
            md_table(["dataset", "fitted", "n", *OUTCOME_HEADERS], rows),
            "",
            "Cut of each leave-one-out fit: "
            + ", ".join(
                f"{n} {d.threshold:.4f} ({d.training_questions} training questions)"
                for n, d in lodo.datasets.items()
            )
            + ".",
            "",
        ]
    if lodo.skipped:
        out += ["Not left out: " + "; ".join(f"{k} ({v})" for k, v in lodo.skipped.items()), ""]
    return out


FIELD_HEADERS = [
    "method",
    "group",
    "stage",
    "LMC",
    "RC",
    "In-Acc [95% CI]",
    "AUROC [95% CI]",
    "AUROC within rel. [95% CI]",
    "AUROC within dataset [95% CI]",
    "skip recall [95% CI]",
    "skip precision [95% CI]",
    "s/question",
    "extra calls s/q",
    "s/q minus always",
]


def _field_section(f: FieldComparison | None) -> list[str]:
    if f is None:
        return []
    order = {"knowgate": 0, "peer": 1, "baseline": 2}
    rows = sorted(f.rows.values(), key=lambda r: (order.get(r.group, 3), r.method))
    sizes = ", ".join(f"{d} {n}" for d, n in f.datasets.items())
    out = [
        "## The gate against the field (AdaRAGUE-style, same questions)",
        "",
        f"{f.n} questions every method has ({sizes}); every method's held-out decisions at the "
        f"operating rule **{f.operating_rule}** (each cut chosen on its own training folds). "
        "*LMC*: LM calls per question (a single-pass gate: 1 + RC); *RC*: retrieval calls per "
        "question; *extra calls s/q*: the method's own extra model calls (sampled answers, the "
        "self-report prompt), measured in the peers branch; *s/q minus always*: its mean wall "
        "time minus plain RAG's on the same questions.",
        "",
        md_table(
            FIELD_HEADERS,
            [
                [
                    f"**{r.method}**" if r.method == f.best_single_pass else r.method,
                    r.group,
                    r.stage,
                    r.lm_calls,
                    r.retrieval_calls,
                    fmt_interval(r.accuracy),
                    fmt_interval(r.auroc),
                    fmt_interval(r.auroc_within_relation),
                    fmt_interval(r.auroc_within_dataset),
                    fmt_interval(r.skip_recall),
                    fmt_interval(r.skip_precision),
                    r.mean_seconds,
                    r.extra_seconds,
                    fmt(r.seconds_minus_always, 4),
                ]
                for r in rows
            ],
        ),
        "",
    ]
    if f.best_single_pass:
        out += [
            f"In bold: **{f.best_single_pass}**, the knowgate policy without extra LM calls "
            "with the highest held-out AUROC here - picked after the fact on these numbers, so "
            "the comparisons below cover every pre-declared knowgate policy, not just it.",
            "",
        ]
    if f.versus:
        out += [
            "### Each knowgate policy against each peer (paired bootstrap, same questions)",
            "",
            "*AUROC diff*: knowgate minus peer. *accuracy at equal rate*: mean accuracy "
            "difference between the two accuracy-vs-retrieval-rate curves (rates 0.01-0.99; "
            "and >= 0.8). Verdict: *above* / *below* when the interval excludes 0, else "
            "*matches*.",
            "",
            md_table(
                [
                    "knowgate",
                    "peer",
                    "AUROC diff [95% CI]",
                    "verdict",
                    "accuracy at equal rate [95% CI]",
                    "verdict",
                    "rates >= 0.8 [95% CI]",
                ],
                [
                    [
                        v.knowgate,
                        v.peer,
                        fmt_interval(v.auroc_difference, signed=True),
                        v.auroc_verdict,
                        fmt_interval(v.curve_difference, 4, signed=True),
                        v.accuracy_verdict,
                        fmt_interval(v.curve_difference_high_rates, 4, signed=True),
                    ]
                    for v in f.versus
                ],
            ),
            "",
        ]
    if f.above_random_at_every_rate:
        out += [
            "Curve strictly above random gating at every retrieval rate 0.01-0.99 on these "
            "questions: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in f.above_random_at_every_rate.items())
            + ". Curves: `curves_field.png`.",
            "",
        ]
    if f.not_in_table:
        out += [
            "Not in the table: " + "; ".join(f"{k} ({v})" for k, v in f.not_in_table.items()),
            "",
        ]
    return out


def _choices_section(s: BenchmarkSummary) -> list[str]:
    chosen = {k: p.choices_per_fold for k, p in s.policies.items() if p.choices_per_fold}
    if not chosen:
        return []
    return [
        "## What each recipe chose (inner CV on each outer fold's training rows)",
        "",
        md_table(
            ["policy", "choice per outer fold"],
            [[k, "; ".join(v)] for k, v in chosen.items()],
        ),
        "",
    ]


def best_sparsity_by_layer(layers: LayerStudy) -> dict[str, list[float | None]]:
    """Per position and block, the best sparsity metric's AUROC."""
    out: dict[str, list[float | None]] = {}
    for position in layers.positions:
        row: list[float | None] = []
        for k in range(len(layers.sparsity_layers)):
            values = [
                value
                for v in layers.sparsity_auroc.values()
                if (value := v[position][k]) is not None
            ]
            row.append(max(values) if values else None)
        out[position] = row
    return out


def _layers_section(layers: LayerStudy | None) -> list[str]:
    if layers is None:
        return []
    out = [
        "## Where the signal lives: AUROC by layer and position",
        "",
        "*prompt_end* is the last prompt token (a template token for chat prompts); "
        "*question_end* the question's last token; *question_mean* the mean over its tokens. "
        "Sparsity: per block, the best metric's held-out AUROC (direction chosen per outer "
        "fold on training rows). Probe: out-of-fold AUROC on each outer fold's training rows "
        f"at C={fmt(layers.probe_c)}, averaged over outer folds. `layers.png`.",
        "",
    ]
    if layers.probe_auroc:
        out += [
            md_table(
                ["probe at", *[f"block {b}" for b in layers.probe_layers]],
                [[p, *row] for p, row in layers.probe_auroc.items()],
            ),
            "",
        ]
    best_by_layer = [[p, *row] for p, row in best_sparsity_by_layer(layers).items()]
    shown = list(range(0, len(layers.sparsity_layers), max(1, len(layers.sparsity_layers) // 10)))
    shown = sorted(set(shown) | {len(layers.sparsity_layers) - 1})
    out += [
        md_table(
            ["best sparsity at", *[f"block {layers.sparsity_layers[k]}" for k in shown]],
            [[r[0], *[r[1 + k] for k in shown]] for r in best_by_layer],
        ),
        "",
        "Best per position: "
        + "; ".join(
            f"{p}: sparsity {m} at block {b} ({fmt(v)})"
            + (
                f", probe at block {layers.best_probe[p][0]} ({fmt(layers.best_probe[p][1])})"
                if p in layers.best_probe
                else ""
            )
            for p, (m, b, v) in layers.best_sparsity.items()
        )
        + ".",
        "",
    ]
    return out


def _lodo_auroc_section(lodo: LeaveOneDatasetOutAuroc | None, top: int = 15) -> list[str]:
    if lodo is None or (not lodo.policies and not lodo.signals):
        return []
    columns = [*lodo.datasets, "mean"]

    def cells(per: Mapping[str, UnseenAuroc]) -> list[str]:
        out = []
        for d in columns:
            u = per.get(d)
            out.append("-" if u is None else f"{fmt(u.unseen)} ({fmt(u.in_distribution)})")
        return out

    signals = sorted(
        lodo.signals.items(),
        key=lambda kv: -((kv[1].get("mean") and kv[1]["mean"].unseen) or 0.0),
    )[:top]
    out = [
        "## Does the ranking hold on unseen datasets? (leave one dataset out, AUROC)",
        "",
        "Each cell: AUROC on that dataset when fitted (or the direction chosen) on the other "
        "datasets only, and in brackets the cross-fitted in-distribution AUROC on the same "
        "questions. *mean*: over datasets.",
        "",
    ]
    if lodo.policies:
        out += [
            md_table(["policy", *columns], [[k, *cells(v)] for k, v in lodo.policies.items()]),
            "",
        ]
    if signals:
        out += [
            f"Single signals, the {top} with the best mean unseen AUROC (all in `results.json`):",
            "",
            md_table(["signal", *columns], [[f"`{k}`", *cells(v)] for k, v in signals]),
            "",
        ]
    if lodo.skipped:
        out += ["Not scored: " + "; ".join(f"{k} ({v})" for k, v in lodo.skipped.items()), ""]
    return out


def _null_section(null: NullCheck | None) -> list[str]:
    if null is None:
        return []
    rows = [
        [
            name,
            "; ".join(fmt_interval(i) for i in p.folds),
            p.auroc,
            fmt(p.contains_half),
        ]
        for name, p in null.policies.items()
    ]
    folds = max((len(p.folds) for p in null.policies.values()), default=0)
    return [
        "## Null check (leakage guard)",
        "",
        f"The main policies cross-fitted again with {null.permutation}. A leak-free procedure "
        "ranks no better than chance among the held-out questions of one outer fold and one "
        "dataset (one model scores them; pooled over folds the AUROC is not exactly null, so "
        "folds are tested one by one). Intervals: normal, with the AUROC's variance under the "
        "null (Mann-Whitney: Hanley-McNeil at 0.5), "
        f"{null.confidence:.0%} family-wise (Bonferroni over {folds} folds of "
        f"{len(null.policies)} policies). **Every interval contains 0.5: {fmt(null.passed)}.**",
        "",
        md_table(
            ["policy", "AUROC within dataset, per fold [CI]", "pooled AUROC", "all contain 0.5"],
            rows,
        ),
        "",
    ]


def _curve_target_lines(label: str, c: CurveTargets) -> list[str]:
    not_beaten = c.single_features_not_beaten_on_average
    return [
        f"- ({label}) fused curve above random gating at every retrieval rate: "
        f"{fmt(c.above_random_at_every_rate)} (above at {fmt(c.share_of_rates_above_random)} "
        f"of rates; mean difference {fmt_interval(c.mean_difference_to_random, 4, signed=True)}"
        f", largest shortfall {fmt(c.min_difference_to_random, 4)})",
        f"- ({label}) above each single feature on average: "
        f"{fmt(c.above_every_single_feature_on_average)}"
        + (
            f" (not above {len(not_beaten)} of {c.single_features_compared}: "
            f"{', '.join(not_beaten)})"
            if not_beaten
            else ""
        ),
        f"- ({label}) above question-only on average: {fmt(c.above_question_only_on_average)} "
        f"(mean difference {fmt_interval(c.mean_difference_to_question_only, 4, signed=True)})",
    ]


def _targets_section(s: BenchmarkSummary) -> list[str]:
    t = s.targets
    if t is None:
        return []
    out = ["## Targets", ""]
    for label, c in (("all rates", t.curve), ("rates >= 0.8", t.curve_high_rates)):
        if c is not None:
            out += _curve_target_lines(label, c)
    out += [
        f"- default operating point ({t.operating_rule}) within 1 point of always: "
        f"{fmt(t.accuracy_within_1pt_of_always)} (accuracy {fmt(t.accuracy)} vs "
        f"{fmt(t.always_accuracy)}; difference "
        f"{fmt_interval(t.accuracy_minus_always, signed=True)})",
        f"- above random gating at the same retrieval rate: {fmt(t.above_random_at_same_rate)} "
        f"(difference {fmt_interval(t.accuracy_minus_random, signed=True)})",
        f"- skip recall >= 0.5 (skips at least half of what the model knows): "
        f"{fmt(t.skip_recall_at_least_half)} ({fmt_interval(t.skip_recall)}; retrieval rate "
        f"{fmt(t.retrieval_rate)})",
        f"- skip precision above random gating's (the closed-book accuracy "
        f"{fmt(t.closed_book_accuracy)}): {fmt(t.skip_precision_above_random)} "
        f"({fmt_interval(t.skip_precision)})",
        f"- mean wall time {fmt(t.mean_seconds)} s/question vs always-retrieve (plain RAG) "
        f"{fmt(t.always_mean_seconds)} s (ratio {fmt(t.seconds_vs_always)})",
        "",
    ]
    return out


def _curve_section(s: BenchmarkSummary, curves: CurveSummary | None, title: str) -> list[str]:
    if curves is None or not curves.headline_vs:
        return []
    vs = curves.headline_vs
    family = {k: v.family for k, v in s.policies.items()}
    singles = sorted(
        ((k, v) for k, v in vs.items() if family.get(k) == "single"),
        key=lambda kv: kv[1].mean_difference,
    )
    shown = [
        ("random", vs["random"]),
        *[(k, v) for k, v in vs.items() if family.get(k) == "fused"],
        *singles[:3],
        *([("oracle", vs["oracle"])] if "oracle" in vs else []),
    ]
    rows = [
        [
            k,
            curves.mean_accuracy.get(k),
            v.mean_difference,
            v.share_above,
            v.share_below,
            v.min_difference,
        ]
        for k, v in shown
    ]
    return [
        f"## Accuracy against retrieval rate: rates {title}",
        "",
        f"`curves.png` / `curves.csv`. The {HEADLINE} curve (mean accuracy "
        f"{fmt(curves.mean_accuracy.get(HEADLINE))}) against other curves; *share above* / "
        "*below*: of the grid rates (step 0.01) where it is strictly above / below. Single "
        "features: the three whose curves come closest to or above it.",
        "",
        md_table(
            [
                "other curve",
                "its mean accuracy",
                "mean_difference",
                "share_above",
                "share_below",
                "min_difference",
            ],
            rows,
        ),
        "",
    ]


def _breakdown_sections(s: BenchmarkSummary) -> list[str]:
    out: list[str] = []
    if s.per_dataset:
        names = list(s.per_dataset)
        datasets = list(s.per_dataset[names[0]])
        out += [
            "## Per dataset",
            "",
            "Accuracy / retrieval rate of each policy's held-out decisions.",
            "",
            md_table(
                ["dataset", *names],
                [
                    [
                        d,
                        *[
                            f"{fmt(s.per_dataset[p][d].accuracy)} / "
                            f"{fmt(s.per_dataset[p][d].retrieval_rate)}"
                            if d in s.per_dataset[p]
                            else "-"
                            for p in names
                        ],
                    ]
                    for d in datasets
                ],
            ),
            "",
        ]
    scored = [
        k
        for k in ordered_policies(s, top_singles=5)
        if s.policies[k].ranking is not None and s.policies[k].family != "oracle"
    ]
    if scored:
        datasets = list(s.policies[scored[0]].per_dataset)
        out += [
            "Held-out AUROC per dataset (closed-book correctness); *within dataset* in the "
            "policy table pools the pairs of these.",
            "",
            md_table(
                ["policy", *datasets],
                [
                    [
                        k,
                        *[
                            s.policies[k].per_dataset[d].auroc
                            if d in s.policies[k].per_dataset
                            else None
                            for d in datasets
                        ],
                    ]
                    for k in scored
                ],
            ),
            "",
        ]
    if s.popqa is not None:
        policies = list(s.popqa.per_popularity_bucket)
        out += [
            "## PopQA per popularity bucket (s_pop)",
            "",
            "Accuracy / retrieval rate of each policy's held-out decisions.",
            "",
            _breakdown_table("bucket", s.popqa.per_popularity_bucket, policies),
            "",
            "## PopQA per relation",
            "",
            _breakdown_table("relation", s.popqa.per_relation, policies),
            "",
        ]
    corr = s.sparsity_vs_log_popularity
    if corr:
        out += [
            "## Sparsity features against log popularity (PopQA rows, Spearman)",
            "",
            "Top 10 by absolute pooled correlation; *within relation* is the row-weighted mean "
            "of per-relation correlations (relations with >= 20 rows).",
            "",
            md_table(
                ["feature", "pooled rho", "p", "within relation", "relations"],
                [
                    [
                        f"`{k}`",
                        v.spearman,
                        "-" if v.p_value is None else f"{v.p_value:.1e}",
                        v.spearman_within_relation,
                        v.relations,
                    ]
                    for k, v in list(corr.items())[:10]
                ],
            ),
            "",
        ]
    return out


def render_markdown(summary: BenchmarkSummary) -> str:
    """The benchmark of one model as Markdown."""
    s = summary
    out = (
        _header(s)
        + _branches_section(s)
        + _field_section(s.field_comparison)
        + _policies_section(s)
        + _choices_section(s)
        + _lodo_section(s.leave_one_dataset_out)
        + _lodo_auroc_section(s.leave_one_dataset_out_auroc)
        + _layers_section(s.layers)
    )
    out += _null_section(s.null_check)
    out += _curve_section(s, s.curves, "0.01-0.99")
    out += _curve_section(s, s.curves_high_rates, ">= 0.80")
    out += _targets_section(s)
    out += _breakdown_sections(s)
    return "\n".join(out)


def curves_csv(result: BenchmarkResult) -> str:
    """Long-format CSV: subset, policy, retrieval rate, accuracy."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subset", "policy", "retrieval_rate", "accuracy"])
    for subset, curves in (("all", result.curves), ("popqa", result.popqa_curves)):
        for name, values in curves.items():
            for r, a in zip(result.grid, values, strict=True):
                writer.writerow([subset, name, f"{r:.2f}", f"{a:.5f}"])
    return buf.getvalue()


def _plot_curves(result: BenchmarkResult, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    summary = result.summary
    for subset, curves, fname in (
        ("all questions", result.curves, "curves.png"),
        ("PopQA questions", result.popqa_curves, "curves_popqa.png"),
    ):
        if not curves:
            continue
        singles = sorted(
            (k for k in curves if k in summary.policies and summary.policies[k].family == "single"),
            key=lambda k: -float(curves[k][1:-1].mean()),
        )[:3]
        names = [k for k in PLOTTED_SETS if k in curves] + singles
        names += [POPULARITY] if POPULARITY in curves else []
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, lo in zip(axes, (0.0, 0.7), strict=True):
            grid = result.grid
            keep = grid >= lo
            ax.plot(grid[keep], curves["random"][keep], "k:", lw=1.2, label="random (diagonal)")
            if "oracle" in curves:
                ax.plot(grid[keep], curves["oracle"][keep], color="0.6", lw=1, label="oracle")
            for name in names:
                style = "-" if name not in singles else "--"
                lw = 2.2 if name == HEADLINE else 1.1
                ax.plot(grid[keep], curves[name][keep], style, lw=lw, label=name)
            ax.set_xlabel("retrieval rate (retriever calls per question)")
            ax.set_ylabel("In-Accuracy")
            ax.grid(alpha=0.3)
        axes[0].set_title(f"{summary.model_id}: accuracy vs retrieval rate ({subset})")
        axes[1].set_title("zoom: retrieval rate >= 0.7")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _plot_field(result: BenchmarkResult, out_dir: Path) -> list[str]:
    field = result.summary.field_comparison
    curves = result.field_curves
    if field is None or not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = {k: r.group for k, r in field.rows.items()}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, lo in zip(axes, (0.0, 0.7), strict=True):
        grid = result.grid
        keep = grid >= lo
        ax.plot(grid[keep], curves["random"][keep], "k:", lw=1.4, label="random gating")
        if "oracle" in curves:
            ax.plot(grid[keep], curves["oracle"][keep], color="0.6", lw=1, label="oracle")
        for name, curve in curves.items():
            if name in ("random", "oracle") or group.get(name) == "baseline":
                continue
            knowgate = group.get(name) == "knowgate"
            lw = 2.2 if name == field.best_single_pass else (1.4 if knowgate else 1.0)
            ax.plot(grid[keep], curve[keep], "-" if knowgate else "--", lw=lw, label=name)
        ax.set_xlabel("retrieval rate (RC)")
        ax.set_ylabel("In-Accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"{result.summary.model_id}: knowgate (solid) vs the field (dashed), {field.n} questions"
    )
    axes[1].set_title("zoom: retrieval rate >= 0.7")
    axes[1].legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "curves_field.png", dpi=110)
    plt.close(fig)
    return ["curves_field.png"]


def _plot_layers(result: BenchmarkResult, out_dir: Path) -> list[str]:
    layers = result.summary.layers
    if layers is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for position, row in best_sparsity_by_layer(layers).items():
        best = [np.nan if v is None else v for v in row]
        ax.plot(layers.sparsity_layers, best, "--", label=f"best sparsity metric, {position}")
        if layers.probe_auroc and position in layers.probe_auroc:
            probe = [np.nan if v is None else v for v in layers.probe_auroc[position]]
            ax.plot(layers.probe_layers, probe, "o-", label=f"probe, {position}")
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("held-out AUROC (closed-book correct)")
    ax.set_title(f"{result.summary.model_id}: where the signal lives")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "layers.png", dpi=110)
    plt.close(fig)
    return ["layers.png"]


def _plot_reliability(result: BenchmarkResult, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = result.table.cb_correct
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name in PLOTTED_SETS:
        policy = result.held_out.policies.get(name)
        if policy is None or policy.p_known is None:
            continue
        bins = reliability_bins(y, policy.p_known)
        used = bins.count > 0
        ranking = result.summary.policies[name].ranking
        ax.plot(
            bins.mean_confidence[used],
            bins.accuracy[used],
            "o-",
            ms=3,
            lw=2 if name == HEADLINE else 1,
            label=f"{name} (ECE {fmt(None if ranking is None else ranking.ece)})",
        )
    ax.set_xlabel("held-out p(known)")
    ax.set_ylabel("closed-book accuracy")
    ax.set_title(f"Reliability ({ECE_BINS} bins), {result.summary.model_id}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=110)
    plt.close(fig)
    return ["reliability.png"]


def _plot_popqa(result: BenchmarkResult, out_dir: Path) -> list[str]:
    pq = result.summary.popqa
    if pq is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = pq.per_popularity_bucket
    buckets = list(next(iter(per.values())))
    fig, (acc_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(buckets))
    width = 0.8 / len(per)
    for i, (name, rows) in enumerate(per.items()):
        acc_ax.bar(x + i * width, [rows[b].accuracy or 0.0 for b in buckets], width, label=name)
        rate_ax.bar(x + i * width, [rows[b].retrieval_rate or 0.0 for b in buckets], width)
    for ax, label in ((acc_ax, "In-Accuracy"), (rate_ax, "retrieval rate")):
        ax.set_xticks(x + 0.4 - width / 2, buckets)
        ax.set_xlabel("subject popularity (monthly page views)")
        ax.set_ylabel(label)
    acc_ax.legend(fontsize=7)
    acc_ax.set_title(f"PopQA by popularity, {result.summary.model_id}")
    fig.tight_layout()
    fig.savefig(out_dir / "popqa_buckets.png", dpi=110)
    plt.close(fig)
    return ["popqa_buckets.png"]


def write_report(result: BenchmarkResult, out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``summary.md``, ``curves.csv`` and the figures to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "results.json",
        json.dumps(result.summary.to_dict(), indent=2, allow_nan=False) + "\n",
    )
    atomic_write_text(out_dir / "summary.md", render_markdown(result.summary))
    atomic_write_text(out_dir / "curves.csv", curves_csv(result))
    names = ["results.json", "summary.md", "curves.csv"]
    names += _plot_curves(result, out_dir)
    names += _plot_field(result, out_dir)
    names += _plot_layers(result, out_dir)
    names += _plot_reliability(result, out_dir)
    names += _plot_popqa(result, out_dir)
    return [out_dir / n for n in names]
