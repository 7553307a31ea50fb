"""Writes a calibration study to disk: ``report.json``, ``report.md``, reliability and ROC PNGs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from knowgate.evaluation.calibration.study import (
    POPULARITY_SINGLE,
    SELECTED,
    BestFeature,
    CalibrationSummary,
    StudyResult,
)
from knowgate.evaluation.labelled import PLOTTED_SETS, LabelledTable
from knowgate.evaluation.metrics import ECE_BINS, reliability_bins
from knowgate.evaluation.reporting import fmt, fmt_interval, md_table
from knowgate.jsonio import atomic_write_text


def render_markdown(summary: CalibrationSummary, *, top_singles: int = 15) -> str:
    """The study as Markdown tables."""
    s = summary
    out = [
        "# Calibration report",
        "",
        f"{s.n_questions} questions, {s.n_correct} answered correctly closed-book "
        f"(accuracy {fmt(s.closed_book_accuracy)}). Held-out metrics from {s.folds}-fold "
        "grouped, stratified cross-validation (nested for the calibrator); calibration: "
        f"{s.calibration}; ECE with {ECE_BINS} equal-width bins.",
        "",
        "## Closed-book accuracy per dataset",
        "",
        md_table(
            ["dataset", "n", "accuracy", "echo-rejected answers"],
            [[k, v.n, v.closed_book_accuracy, v.echo_rejected] for k, v in s.datasets.items()],
        ),
        "",
        "## Fused feature sets (held-out folds)",
        "",
        "AUROC is of the logistic regression's score (isotonic calibration adds ties, so "
        "`AUROC cal.` can be lower); *within relation* pools only pairs of PopQA questions of "
        "the same relation. *Brier skill* = 1 - Brier / Brier of always predicting the base "
        "rate (with few correct answers, ECE and Brier are small for any near-constant "
        "predictor; the skill score is not).",
        "",
        md_table(
            [
                "feature set",
                "k",
                "AUROC [95% CI]",
                "AUROC cal.",
                "AUROC within rel.",
                "ECE before",
                "ECE after",
                "Brier before",
                "Brier after",
                "Brier skill",
            ],
            [
                [
                    name,
                    m.n_features,
                    fmt_interval(m.auroc_ci95) if m.auroc_ci95 else m.auroc,
                    m.auroc_calibrated,
                    m.auroc_within_relation,
                    m.ece_before,
                    m.ece_after,
                    m.brier_before,
                    m.brier_after,
                    m.brier_skill_after,
                ]
                for name, m in s.fused.items()
            ],
        ),
        "",
        "AUROC per dataset: "
        + "; ".join(
            f"**{name}** " + ", ".join(f"{d} {fmt(v)}" for d, v in m.auroc_per_dataset.items())
            for name, m in s.fused.items()
            if name in PLOTTED_SETS or name == SELECTED
        ),
        "",
        "### Does a signal family add anything? (paired bootstrap, 95% CI)",
        "",
        md_table(
            ["comparison", "AUROC difference [95% CI]", "within relation [95% CI]"],
            [
                [
                    k,
                    fmt_interval(v.difference, signed=True),
                    fmt_interval(v.within_relation_difference, signed=True),
                ]
                for k, v in s.comparisons.items()
            ],
        ),
        "",
        f"Selected features ({len(s.selected_features)}): "
        + ", ".join(f"`{n}`" for n in s.selected_features),
        "",
        "## Single features",
        "",
        f"Top {top_singles} by held-out AUROC (each fold's direction chosen on its training "
        "folds; *within rel.* is of the same held-out score). *In-sample* chooses the direction "
        "on all rows and scores the same rows: optimistic, shown for reference only. "
        f"Best model feature: {_best_text(s.best_single_feature)}; best prefill feature: "
        f"{_best_text(s.best_single_prefill_feature)}.",
        "",
        md_table(
            ["feature", "family", "stage", "direction", "in-sample", "held-out", "within rel."],
            [
                [
                    f"`{k}`",
                    v.family,
                    v.stage,
                    v.direction,
                    v.auroc_in_sample,
                    v.auroc_held_out,
                    v.auroc_within_relation,
                ]
                for k, v in list(s.single_features.items())[:top_singles]
            ],
        ),
        "",
    ]
    pop = s.single_features.get(POPULARITY_SINGLE)
    if pop:
        out += [
            f"Popularity baseline (Mallen et al. 2023; {pop.n} PopQA rows): `s_pop` held-out "
            f"AUROC {fmt(pop.auroc_held_out)} ({pop.direction}), within relation "
            f"{fmt(pop.auroc_within_relation)}.",
            "",
        ]
    if s.per_popularity_bucket:
        out += [
            "## Selected policy per PopQA popularity bucket (s_pop)",
            "",
            md_table(
                ["bucket", "n", "accuracy", "AUROC", "ECE", "mean p_known"],
                [
                    [k, v.n, v.accuracy, v.auroc, v.ece, v.mean_p_known]
                    for k, v in s.per_popularity_bucket.items()
                ],
            ),
            "",
        ]
    if s.per_relation:
        out += [
            "## Selected policy per PopQA relation",
            "",
            "*constant answer*: the relation's most common gold object and the accuracy of "
            "always answering it (the label-prior trap); *top match*: the most common alias "
            "among the model's correct answers and its share of them.",
            "",
            md_table(
                [
                    "relation",
                    "n",
                    "accuracy",
                    "AUROC",
                    "ECE",
                    "constant answer",
                    "its accuracy",
                    "top match",
                    "share",
                ],
                [
                    [
                        k,
                        b.n,
                        b.accuracy,
                        b.auroc,
                        b.ece,
                        p.constant_answer,
                        p.constant_answer_accuracy,
                        p.top_matched_answer,
                        p.top_matched_share_of_correct,
                    ]
                    for k, (b, p) in s.per_relation.items()
                ],
            ),
            "",
        ]
    t = s.targets
    out += [
        "## Targets",
        "",
        "- fused AUROC above the best single selected feature: "
        f"{fmt(t.fused_auroc_above_best_selected_single)}",
        f"- ECE <= 0.05 after calibration: {fmt(t.ece_after_at_most_0_05)}",
        "",
    ]
    return "\n".join(out)


def _best_text(best: BestFeature | None) -> str:
    return "-" if best is None else f"`{best.feature}` ({fmt(best.auroc_held_out)})"


def _plots(table: LabelledTable, result: StudyResult, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = table.y
    written = []
    sel = result.predictions[SELECTED]
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for label, p in (("before calibration", sel.score), ("after calibration", sel.p_known)):
        bins = reliability_bins(y, p)
        used = bins.count > 0
        ax.plot(bins.mean_confidence[used], bins.accuracy[used], "o-", ms=4, label=label)
    ax.set_ylabel("observed accuracy")
    ax.set_title(f"Reliability, selected features (held-out, {ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(sel.p_known, bins=np.linspace(0, 1, ECE_BINS + 1), color="tab:orange")
    hist.set_xlabel("predicted p(known)")
    hist.set_ylabel("questions")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=120)
    plt.close(fig)
    written.append("reliability.png")

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name in (*PLOTTED_SETS, SELECTED):
        if name not in result.predictions:
            continue
        fpr, tpr, _ = roc_curve(y, result.predictions[name].score)
        auc = fmt(result.summary.fused[name].auroc)
        ax.plot(fpr, tpr, lw=1.5 if name == SELECTED else 1, label=f"{name} ({auc})")
    best = result.summary.best_single_feature
    if best:
        fpr, tpr, _ = roc_curve(y, result.single_scores[best.feature])
        ax.plot(
            fpr, tpr, "--", lw=1, label=f"best single: {best.feature} ({best.auroc_held_out:.3f})"
        )
    ax.set_xlabel("false positive rate (wrong answers judged known)")
    ax.set_ylabel("true positive rate (correct answers judged known)")
    ax.set_title("ROC, held-out folds")
    ax.legend(loc="lower right", fontsize=6.5)
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=120)
    plt.close(fig)
    written.append("roc.png")
    return written


def write_report(
    table: LabelledTable,
    result: StudyResult,
    out_dir: Path,
    *,
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``reliability.png`` and ``roc.png`` to ``out_dir``.

    ``extra`` (facts about the fitted policy: its id, path, threshold) goes into the JSON only.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**dict(extra or {}), **result.summary.to_dict()}
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(result.summary))
    names = ["report.json", "report.md", *_plots(table, result, out_dir)]
    return [out_dir / n for n in names]
