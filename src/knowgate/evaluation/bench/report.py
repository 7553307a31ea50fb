"""Writes a benchmark to disk: ``results.json``, ``summary.md``, ``curves.csv`` and PNG figures."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowgate.evaluation.bench.held_out import HEADLINE, POPULARITY
from knowgate.evaluation.bench.runner import BenchmarkResult
from knowgate.evaluation.calibration_report import PLOTTED_SETS
from knowgate.evaluation.metrics import ECE_BINS, reliability_bins
from knowgate.jsonio import atomic_write_text as _atomic_write

MAIN_ORDER = ("never", "always", "random (at the fused rate)", "oracle")
TOP_SINGLES = 10
PLOTTED_FUSED = PLOTTED_SETS  # the calibration report plots the same feature sets


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(triple: Sequence[float | None] | None, digits: int = 3, signed: bool = False) -> str:
    if not triple:
        return "-"
    est, low, high = [*list(triple), None, None][:3]
    if est is None:
        return "-"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = f.format(est)
    if low is not None and high is not None:
        text += f" [{f.format(low)}, {f.format(high)}]"
    return text


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _breakdown_table(
    label: str, groups: Mapping[str, Mapping[str, Mapping[str, Any]]], policies: Sequence[str]
) -> str:
    """Rows = groups (popularity buckets, relations), cells = accuracy / retrieval rate."""
    first = groups[policies[0]]
    return _table(
        [label, "n", *policies],
        [
            [
                g,
                first[g]["n"],
                *[
                    f"{_fmt(groups[p][g]['accuracy'])} / {_fmt(groups[p][g]['retrieval_rate'], 2)}"
                    for p in policies
                ],
            ]
            for g in first
        ],
    )


def ordered_policies(summary: Mapping[str, Any], top_singles: int = TOP_SINGLES) -> list[str]:
    """Report order: baselines and oracle, fused sets, popularity, the best single features."""
    policies = summary["policies"]
    main = [p for p in MAIN_ORDER if p in policies]
    fused = [k for k, v in policies.items() if v["family"] == "fused"]
    pop = [k for k, v in policies.items() if v["family"] == "popularity"]
    singles = sorted(
        (k for k, v in policies.items() if v["family"] == "single"),
        key=lambda k: -(policies[k].get("auroc") or 0.0),
    )
    return main + fused + pop + singles[:top_singles]


def _outcome_cells(p: Mapping[str, Any]) -> list[Any]:
    """In-Acc, difference from always, EM, F1, retrieval rate, savings eff., LM calls/q."""
    return [
        _ci(p["accuracy"]),
        _ci(p["accuracy_minus_always"], signed=True),
        p["em"],
        p["f1"],
        p["retrieval_rate"],
        p["savings_efficiency"],
        p["lm_calls_per_question"],
    ]


def _policy_rows(
    policies: Mapping[str, Mapping[str, Any]], names: Sequence[str]
) -> list[list[Any]]:
    rows = []
    for name in names:
        p = policies[name]
        auc = p.get("auroc")
        ci = p.get("auroc_ci95")
        rows.append(
            [
                f"**{name}**" if name == HEADLINE else name,
                p["stage"],
                p["n"],
                *_outcome_cells(p),
                "-" if auc is None else _ci([auc, *(ci or [None, None])]),
                p.get("auroc_within_relation"),
                p.get("auroc_within_dataset"),
                p.get("ece"),
                p.get("brier"),
                p["mean_seconds_per_question"],
            ]
        )
    return rows


POLICY_HEADERS = [
    "policy",
    "stage",
    "n",
    "In-Acc [95% CI]",
    "minus always [95% CI]",
    "EM",
    "F1",
    "retrieval rate",
    "savings eff.",
    "LM calls/q",
    "AUROC [95% CI]",
    "AUROC within rel.",
    "AUROC within dataset",
    "ECE",
    "Brier",
    "s/question",
]


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The benchmark of one model as Markdown."""
    s = summary
    meta = s.get("run", {})
    out = [
        f"# Benchmark: {s['model_id']}",
        "",
        f"{s['n_questions']} questions"
        + (
            " (" + ", ".join(f"{d['name']} {d['n']}" for d in meta["datasets"]) + ")"
            if meta
            else ""
        )
        + f"; knowledge base `{meta.get('knowledge_base', '-')}`, k = {meta.get('k', '-')}; "
        f"{s['folds']}-fold grouped, stratified cross-fitting (seed {s['seed']}), calibration "
        f"{s['calibration']}; operating rule **{s['operating_rule']}** (each fold's cut chosen "
        "on its training folds). Intervals: bootstrap 95% (percentile).",
        "",
    ]
    if meta.get("command"):
        out += ["```bash", meta["command"], "```", ""]
    out += ["## Both branches", ""]
    out.append(
        _table(
            [
                "dataset",
                "n",
                "closed-book In-Acc",
                "with retrieval",
                "oracle",
                "oracle retrieval rate",
                "evidence in prompt",
                "cb right, rag wrong",
                "s/q closed-book",
                "s/q gated retrieval",
                "s/q plain RAG",
            ],
            [
                [
                    name,
                    b["n"],
                    b["closed_book_accuracy"],
                    b["retrieval_accuracy"],
                    b["oracle_accuracy"],
                    b["oracle_retrieval_rate"],
                    b["evidence_in_prompt"],
                    b["closed_book_right_retrieval_wrong"],
                    b["mean_closed_book_seconds"],
                    b["mean_retrieval_seconds"],
                    b["mean_plain_rag_seconds"],
                ]
                for name, b in s["branches"].items()
            ],
        )
    )
    out += [
        "",
        "*evidence in prompt*: share of questions with gold evidence passages whose prompt held "
        "one. Times per question are shares of batched stages; *gated retrieval* includes the "
        "gate's prefill, *plain RAG* is retrieval + answer only (the `always` baseline).",
        "",
        "## Policies at the default operating point (held-out)",
        "",
        _table(POLICY_HEADERS, _policy_rows(s["policies"], ordered_policies(s))),
        "",
        "Popularity is scored on PopQA rows only. Single features: the "
        f"{TOP_SINGLES} with the highest held-out AUROC (all in `results.json`).",
        "",
    ]
    if s.get("skipped_policies"):
        out += [
            "Not fitted: " + "; ".join(f"{k} ({v})" for k, v in s["skipped_policies"].items()),
            "",
        ]
    if s.get("operating_points"):
        out += [
            f"## Operating points of the {HEADLINE} policy (held-out)",
            "",
            _table(
                ["rule (cut chosen on training folds)", *POLICY_HEADERS[3:10], "cut per fold"],
                [
                    [
                        name,
                        *_outcome_cells(p),
                        ", ".join(_fmt(t) for t in p.get("thresholds_per_fold", [])),
                    ]
                    for name, p in s["operating_points"].items()
                ],
            ),
            "",
        ]
        sug = s.get("suggested_default_operating_point")
        if sug:
            cuts = ", ".join(f"{k} `{v}`" for k, v in sug.get("cuts_by_rule", {}).items())
            curve = sug.get("break_even_curve", {})
            out += [
                f"Cuts fitted on all questions' held-out p(known): {cuts}. Suggested default "
                f"(**{sug['rule']}**): `{sug['operating_point']}`. Break-even's retrieval-accuracy "
                f"curve: logit P = {curve.get('intercept')} + {curve.get('slope')} logit p.",
                "",
            ]
    for key, title in (("curves", "0.01-0.99"), ("curves_high_rates", ">= 0.80")):
        out += _curve_section(s, key, title)
    t = s.get("targets", {})
    if "policy" in t:
        out += ["## Targets", ""]
        for key, label in (("curve", "all rates"), ("curve_high_rates", "rates >= 0.8")):
            c = t[key]
            out += [
                f"- ({label}) fused curve above random gating at every retrieval rate: "
                f"{_fmt(c['above_random_at_every_rate'])} (above at "
                f"{_fmt(c['share_of_rates_above_random'])} of rates; mean difference "
                f"{_ci(c['mean_difference_to_random_ci95'], 4, signed=True)}, largest "
                f"shortfall {_fmt(c['min_difference_to_random'], 4)})",
                f"- ({label}) above each single feature on average: "
                f"{_fmt(c['above_every_single_feature_on_average'])}"
                + (
                    f" (not above {len(c['single_features_not_beaten_on_average'])} of "
                    f"{c['single_features_compared']}: "
                    f"{', '.join(c['single_features_not_beaten_on_average'])})"
                    if c["single_features_not_beaten_on_average"]
                    else ""
                ),
                f"- ({label}) above question-only on average: "
                f"{_fmt(c['above_question_only_on_average'])} (mean difference "
                f"{_ci(c['mean_difference_to_question_only_ci95'], 4, signed=True)})",
            ]
        out += [
            f"- default operating point ({t['operating_rule']}) within 1 point of always: "
            f"{_fmt(t['accuracy_within_1pt_of_always'])} (accuracy {_fmt(t['accuracy'])} vs "
            f"{_fmt(t['always_accuracy'])}; difference "
            f"{_ci(t['accuracy_minus_always'], signed=True)})",
            f"- savings efficiency >= 0.5: {_fmt(t['savings_efficiency_at_least_0.5'])} "
            f"({_fmt(t['savings_efficiency'])}; retrieval rate {_fmt(t['retrieval_rate'])} vs "
            f"oracle {_fmt(t['oracle_retrieval_rate'])})",
            f"- total wall time {_fmt(t['total_seconds'], 1)} s vs always-retrieve "
            f"{_fmt(t['always_total_seconds'], 1)} s (ratio {_fmt(t['seconds_vs_always'])})",
            "",
        ]
    per_ds = s.get("per_dataset") or {}
    if per_ds:
        names = list(per_ds)
        datasets = list(per_ds[names[0]])
        out += [
            "## Per dataset",
            "",
            "Accuracy / retrieval rate of each policy's held-out decisions.",
            "",
            _table(
                ["dataset", *names],
                [
                    [
                        d,
                        *[
                            f"{_fmt(per_ds[p][d]['accuracy'])} / "
                            f"{_fmt(per_ds[p][d]['retrieval_rate'], 3)}"
                            if d in per_ds[p]
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
        if s["policies"][k].get("auroc") is not None and s["policies"][k]["family"] != "oracle"
    ]
    if scored:
        datasets = list(s["policies"][scored[0]]["per_dataset"])
        out += [
            "Held-out AUROC per dataset (closed-book correctness); *within dataset* in the "
            "policy table pools the pairs of these.",
            "",
            _table(
                ["policy", *datasets],
                [
                    [
                        k,
                        *[
                            s["policies"][k]["per_dataset"].get(d, {}).get("auroc")
                            for d in datasets
                        ],
                    ]
                    for k in scored
                ],
            ),
            "",
        ]
    pq = s.get("popqa") or {}
    if pq:
        policies = list(pq["per_popularity_bucket"])
        out += [
            "## PopQA per popularity bucket (s_pop)",
            "",
            "Accuracy / retrieval rate of each policy's held-out decisions.",
            "",
            _breakdown_table("bucket", pq["per_popularity_bucket"], policies),
            "",
            "## PopQA per relation",
            "",
            _breakdown_table("relation", pq["per_relation"], policies),
            "",
        ]
    corr = s.get("sparsity_vs_log_popularity") or {}
    if corr:
        out += [
            "## Sparsity features against log popularity (PopQA rows, Spearman)",
            "",
            "Top 10 by absolute pooled correlation; *within relation* is the row-weighted mean "
            "of per-relation correlations (relations with >= 20 rows).",
            "",
            _table(
                ["feature", "pooled rho", "p", "within relation", "relations"],
                [
                    [
                        f"`{k}`",
                        v["spearman"],
                        f"{v['p_value']:.1e}",
                        v["spearman_within_relation"],
                        v["relations"],
                    ]
                    for k, v in list(corr.items())[:10]
                ],
            ),
            "",
        ]
    return "\n".join(out)


CURVE_COLS = ["mean_difference", "share_above", "share_below", "min_difference"]


def _curve_section(s: Mapping[str, Any], key: str, title: str) -> list[str]:
    curves = s.get(key) or {}
    vs = curves.get("headline_vs", {})
    if not vs:
        return []
    family = {k: v.get("family") for k, v in s["policies"].items()}
    singles = sorted(
        ((k, v) for k, v in vs.items() if family.get(k) == "single"),
        key=lambda kv: kv[1]["mean_difference"],
    )
    shown = [
        ("random", vs["random"]),
        *[(k, v) for k, v in vs.items() if family.get(k) == "fused"],
        *singles[:3],
        *([("oracle", vs["oracle"])] if "oracle" in vs else []),
    ]
    rows = [[k, curves["mean_accuracy"].get(k), *[v[c] for c in CURVE_COLS]] for k, v in shown]
    return [
        f"## Accuracy against retrieval rate: rates {title}",
        "",
        f"`curves.png` / `curves.csv`. The {HEADLINE} curve (mean accuracy "
        f"{_fmt(curves['mean_accuracy'].get(HEADLINE))}) against other curves; *share above* / "
        "*below*: of the grid rates (step 0.01) where it is strictly above / below. Single "
        "features: the three whose curves come closest to or above it.",
        "",
        _table(["other curve", "its mean accuracy", *CURVE_COLS], rows),
        "",
    ]


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
            (k for k in curves if summary["policies"].get(k, {}).get("family") == "single"),
            key=lambda k: -float(curves[k][1:-1].mean()),
        )[:3]
        names = [k for k in PLOTTED_FUSED if k in curves] + singles
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
        axes[0].set_title(f"{summary['model_id']}: accuracy vs retrieval rate ({subset})")
        axes[1].set_title("zoom: retrieval rate >= 0.7")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def _plot_reliability(result: BenchmarkResult, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = result.table.cb_correct
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name in PLOTTED_FUSED:
        policy = result.held_out.policies.get(name)
        if policy is None or policy.p_known is None:
            continue
        bins = reliability_bins(y, policy.p_known)
        used = bins.count > 0
        ece = result.summary["policies"][name].get("ece")
        ax.plot(
            bins.mean_confidence[used],
            bins.accuracy[used],
            "o-",
            ms=3,
            lw=2 if name == HEADLINE else 1,
            label=f"{name} (ECE {_fmt(ece)})",
        )
    ax.set_xlabel("held-out p(known)")
    ax.set_ylabel("closed-book accuracy")
    ax.set_title(f"Reliability ({ECE_BINS} bins), {result.summary['model_id']}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=110)
    plt.close(fig)
    return ["reliability.png"]


def _plot_popqa(result: BenchmarkResult, out_dir: Path) -> list[str]:
    pq = result.summary.get("popqa") or {}
    if not pq:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = pq["per_popularity_bucket"]
    buckets = list(next(iter(per.values())))
    fig, (acc_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(buckets))
    width = 0.8 / len(per)
    for i, (name, rows) in enumerate(per.items()):
        acc_ax.bar(x + i * width, [rows[b]["accuracy"] for b in buckets], width, label=name)
        rate_ax.bar(x + i * width, [rows[b]["retrieval_rate"] for b in buckets], width)
    for ax, label in ((acc_ax, "In-Accuracy"), (rate_ax, "retrieval rate")):
        ax.set_xticks(x + 0.4 - width / 2, buckets)
        ax.set_xlabel("subject popularity (monthly page views)")
        ax.set_ylabel(label)
    acc_ax.legend(fontsize=7)
    acc_ax.set_title(f"PopQA by popularity, {result.summary['model_id']}")
    fig.tight_layout()
    fig.savefig(out_dir / "popqa_buckets.png", dpi=110)
    plt.close(fig)
    return ["popqa_buckets.png"]


def write_report(result: BenchmarkResult, out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``summary.md``, ``curves.csv`` and the figures to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        out_dir / "results.json", json.dumps(result.summary, indent=2, allow_nan=False) + "\n"
    )
    _atomic_write(out_dir / "summary.md", render_markdown(result.summary))
    _atomic_write(out_dir / "curves.csv", curves_csv(result))
    names = ["results.json", "summary.md", "curves.csv"]
    names += _plot_curves(result, out_dir)
    names += _plot_reliability(result, out_dir)
    names += _plot_popqa(result, out_dir)
    return [out_dir / n for n in names]
