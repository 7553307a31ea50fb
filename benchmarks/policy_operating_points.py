"""What each operating point does with a fused policy, on held-out (cross-fitted) predictions.

Reads finished closed-book caches (run `knowgate calibrate` or `run_closed_book` first; no model
is loaded) and prints Markdown tables: retrieval rate and accuracy of the questions answered
without retrieval at fixed p(known) thresholds, and the thresholds the operating points choose.

    .venv/bin/python benchmarks/policy_operating_points.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from knowgate.evaluation.branches.cache import default_runs_dir
from knowgate.evaluation.branches.closed_book import load_closed_book
from knowgate.evaluation.cross_fitting import cross_fit, outer_splits
from knowgate.evaluation.datasets import load_dataset
from knowgate.evaluation.labelled import build_table, resolve_features
from knowgate.policy import fit_fused, parse_operating_point

OPERATING_POINTS = (
    "probability:0.5",
    "probability:0.2",
    "cost:1:5",
    "budget:0.95",
    "budget:0.9",
    "accuracy:0.5:0.05",
    "accuracy:0.3:0.05",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m", help="model directory in the cache")
    parser.add_argument("--data", default="popqa_random,popqa_h2,nq_1000")
    parser.add_argument("--features", default="prefill")
    parser.add_argument("--calibration", default="sigmoid")
    parser.add_argument("--cache-dir", type=Path, default=default_runs_dir() / "closed_book")
    args = parser.parse_args()
    records = []
    for name in args.data.split(","):
        matches = sorted((args.cache_dir / args.model).glob(f"{name}-*.jsonl"))
        if len(matches) != 1:
            raise SystemExit(f"expected one cache file for {name}, found {matches}")
        records += load_closed_book(matches[0], load_dataset(name))
    table = build_table(records)
    names = resolve_features(table, [args.features])
    x, y = table.matrix(names), table.y
    splits = outer_splits(y, table.groups, folds=5, seed=0)
    p = cross_fit(x, y, table.groups, names, splits, calibration=args.calibration).p_known
    print(
        f"{args.model}: {y.size} questions, {y.sum()} correct; features {args.features} "
        f"({len(names)}), {args.calibration}; held-out p(known) quantiles 50/90/99%: "
        + ", ".join(f"{q:.3f}" for q in np.quantile(p, [0.5, 0.9, 0.99]))
    )
    print()
    print(
        "| threshold on p(known) | retrieval rate | skipped | accuracy when skipped "
        "| share of all correct answers skipped |"
    )
    print("|---|---|---|---|---|")
    for t in (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05):
        skip = p >= t
        acc = f"{y[skip].mean():.3f}" if skip.any() else "-"
        print(
            f"| {t} | {1 - skip.mean():.3f} | {skip.sum()} | {acc} | "
            f"{y[skip].sum() / y.sum():.3f} |"
        )
    print()
    print("| operating point | threshold | retrieval rate | accuracy without retrieval | notes |")
    print("|---|---|---|---|---|")
    for text in OPERATING_POINTS:
        fit = fit_fused(
            x,
            y,
            names,
            calibration=args.calibration,
            operating_point=parse_operating_point(text),
            groups=table.groups,
        )
        c = fit.threshold_choice
        acc = "-" if c.accuracy_without_retrieval is None else f"{c.accuracy_without_retrieval:.3f}"
        notes = []
        if "accuracy_lower_bound" in c.details:
            notes.append(
                f"lower bound {c.details['accuracy_lower_bound']:.3f} on "
                f"{c.details['n_accepted']} held-out skips"
            )
        if "note" in c.details:
            notes.append(c.details["note"])
        print(
            f"| `{text}` | {fit.policy.threshold:.3f} | {c.retrieval_rate:.3f} | {acc} "
            f"| {'; '.join(notes)} |"
        )


if __name__ == "__main__":
    main()
