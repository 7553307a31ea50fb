"""Writes a calibration study to disk: ``report.json``, ``report.md``, reliability and ROC PNGs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from knowgate.evaluation.calibration_study import LabelledTable, StudyResult
from knowgate.evaluation.metrics import ECE_BINS, reliability_bins
from knowgate.jsonio import atomic_write_text

PLOTTED_SETS = (
    "uncertainty (prefill)",
    "sparsity (prefill)",
    "uncertainty+sparsity (prefill)",
    "question-only",
    "question+uncertainty+sparsity (prefill)",
    "uncertainty+sparsity (prefill+draft)",
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summary: Mapping[str, Any], *, top_singles: int = 15) -> str:
    """The study as Markdown tables."""
    s = summary
    out = [
        "# Calibration report",
        "",
        f"{s['n_questions']} questions, {s['n_correct']} answered correctly closed-book "
        f"(accuracy {_fmt(s['closed_book_accuracy'])}). Held-out metrics from {s['folds']}-fold "
        "grouped, stratified cross-validation (nested for the calibrator); calibration: "
        f"{s['calibration']}; ECE with {ECE_BINS} equal-width bins.",
        "",
        "## Closed-book accuracy per dataset",
        "",
        _table(
            ["dataset", "n", "accuracy", "echo-rejected answers"],
            [
                [k, v["n"], v["closed_book_accuracy"], v["echo_rejected"]]
                for k, v in s["datasets"].items()
            ],
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
    ]
    rows = []
    for name, m in s["fused"].items():
        ci = m.get("auroc_ci95") or [None, None]
        rows.append(
            [
                name,
                m["n_features"],
                m["auroc"],
                f"{_fmt(ci[0])}-{_fmt(ci[1])}",
                m["auroc_calibrated"],
                m["auroc_within_relation"],
                m["ece_before"],
                m["ece_after"],
                m["brier_before"],
                m["brier_after"],
                m["brier_skill_after"],
            ]
        )
    out += [
        _table(
            [
                "feature set",
                "k",
                "AUROC",
                "95% CI",
                "AUROC cal.",
                "AUROC within rel.",
                "ECE before",
                "ECE after",
                "Brier before",
                "Brier after",
                "Brier skill",
            ],
            rows,
        ),
        "",
        "AUROC per dataset: "
        + "; ".join(
            f"**{name}** " + ", ".join(f"{d} {_fmt(v)}" for d, v in m["auroc_per_dataset"].items())
            for name, m in s["fused"].items()
            if name in PLOTTED_SETS or name == "selected"
        ),
        "",
        "### Does a signal family add anything? (paired bootstrap, 95% CI)",
        "",
        _table(
            ["comparison", "AUROC difference", "95% CI", "within relation", "95% CI"],
            [
                [
                    k,
                    v["auroc_difference"][0],
                    f"{_fmt(v['auroc_difference'][1])} to {_fmt(v['auroc_difference'][2])}",
                    (v.get("within_relation_difference") or [None])[0],
                    f"{_fmt((v.get('within_relation_difference') or [None] * 3)[1])} to "
                    f"{_fmt((v.get('within_relation_difference') or [None] * 3)[2])}",
                ]
                for k, v in s.get("comparisons", {}).items()
            ],
        ),
        "",
        f"Selected features ({len(s['selected_features'])}): "
        + ", ".join(f"`{n}`" for n in s["selected_features"]),
        "",
        "## Single features",
        "",
        f"Top {top_singles} by held-out AUROC (direction chosen on the training folds). "
        "Best model feature: "
        + (
            f"`{s['best_single_feature']['feature']}` "
            f"({_fmt(s['best_single_feature']['auroc_held_out'])})"
            if s["best_single_feature"]
            else "-"
        )
        + "; best prefill feature: "
        + (
            f"`{s['best_single_prefill_feature']['feature']}` "
            f"({_fmt(s['best_single_prefill_feature']['auroc_held_out'])})"
            if s["best_single_prefill_feature"]
            else "-"
        )
        + ".",
        "",
        _table(
            ["feature", "family", "stage", "direction", "AUROC pooled", "held-out", "within rel."],
            [
                [
                    f"`{k}`",
                    v["family"],
                    v["stage"],
                    v["direction"],
                    v["auroc_pooled"],
                    v["auroc_held_out"],
                    v["auroc_within_relation"],
                ]
                for k, v in list(s["single_features"].items())[:top_singles]
            ],
        ),
        "",
    ]
    pop = s["single_features"].get("s_pop (metadata, PopQA rows)")
    if pop:
        out += [
            f"Popularity baseline (Mallen et al. 2023; PopQA rows only): `s_pop` AUROC "
            f"{_fmt(pop['auroc_pooled'])} ({pop['direction']}), within relation "
            f"{_fmt(pop['auroc_within_relation'])}.",
            "",
        ]
    if s["per_popularity_bucket"]:
        out += [
            "## Selected policy per PopQA popularity bucket (s_pop)",
            "",
            _table(
                ["bucket", "n", "accuracy", "AUROC", "ECE", "mean p_known"],
                [
                    [k, v["n"], v["accuracy"], v.get("auroc"), v.get("ece"), v.get("mean_p_known")]
                    for k, v in s["per_popularity_bucket"].items()
                ],
            ),
            "",
        ]
    if s["per_relation"]:
        out += [
            "## Selected policy per PopQA relation",
            "",
            "*constant answer*: the relation's most common gold object and the accuracy of "
            "always answering it (the label-prior trap); *top match*: the most common alias "
            "among the model's correct answers and its share of them.",
            "",
            _table(
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
                        v["n"],
                        v["accuracy"],
                        v.get("auroc"),
                        v.get("ece"),
                        v["constant_answer"],
                        v["constant_answer_accuracy"],
                        v["top_matched_answer"],
                        v["top_matched_share_of_correct"],
                    ]
                    for k, v in s["per_relation"].items()
                ],
            ),
            "",
        ]
    targets = s["targets"]
    out += [
        "## Targets",
        "",
        f"- fused AUROC above the best single selected feature: "
        f"{'yes' if targets['fused_auroc_above_best_selected_single'] else 'NO'}",
        f"- ECE <= 0.05 after calibration: {'yes' if targets['ece_after_at_most_0.05'] else 'NO'}",
        "",
    ]
    return "\n".join(out)


def _plots(table: LabelledTable, result: StudyResult, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = table.y
    written = []
    sel = result.predictions["selected"]
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for label, p in (("before calibration", sel.p_raw), ("after calibration", sel.p_calibrated)):
        bins = reliability_bins(y, p)
        used = bins.count > 0
        ax.plot(bins.mean_confidence[used], bins.accuracy[used], "o-", ms=4, label=label)
    ax.set_ylabel("observed accuracy")
    ax.set_title(f"Reliability, selected features (held-out, {ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(sel.p_calibrated, bins=np.linspace(0, 1, ECE_BINS + 1), color="tab:orange")
    hist.set_xlabel("predicted p(known)")
    hist.set_ylabel("questions")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=120)
    plt.close(fig)
    written.append("reliability.png")

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name in (*PLOTTED_SETS, "selected"):
        if name not in result.predictions:
            continue
        fpr, tpr, _ = roc_curve(y, result.predictions[name].p_raw)
        auc = result.summary["fused"][name]["auroc"]
        ax.plot(fpr, tpr, lw=1.5 if name == "selected" else 1, label=f"{name} ({auc:.3f})")
    best = result.summary.get("best_single_feature")
    if best:
        fpr, tpr, _ = roc_curve(y, result.single_scores[best["feature"]])
        ax.plot(
            fpr,
            tpr,
            "--",
            lw=1,
            label=f"best single: {best['feature']} ({best['auroc_held_out']:.3f})",
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
    """Write ``report.json``, ``report.md``, ``reliability.png`` and ``roc.png`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**dict(extra or {}), **result.summary}
    atomic_write_text(
        out_dir / "report.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"
    )
    atomic_write_text(out_dir / "report.md", render_markdown(summary))
    names = ["report.json", "report.md", *_plots(table, result, out_dir)]
    return [out_dir / n for n in names]
