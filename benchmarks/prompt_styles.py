"""Closed-book answer quality of prompt styles on a dev split (not the evaluation sets).

Measures, per prompt style, In-Accuracy, EM, F1, the share of answers cut at the token limit
(full sentences), and the echo rejections of the scorer. Runs are cached in runs/closed_book.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/prompt_styles.py \
        --data nq_open_dev --limit 150
"""

from __future__ import annotations

import argparse
import time

from knowgate.evaluation.branches.closed_book import run_closed_book
from knowgate.evaluation.datasets import load_dataset
from knowgate.models import LanguageModel, ModelConfig, PromptConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--styles", default="chat,few_shot")
    args = parser.parse_args()
    datasets = [load_dataset(d, limit=args.limit) for d in (args.data or ["nq_open_dev"])]
    print("| model | style | dataset | n | In-Acc | EM | F1 | cut at limit | echo-rejected | s/q |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for style in args.styles.split(","):
        lm = LanguageModel.load(ModelConfig(source=args.model, prompt=PromptConfig(style=style)))
        for ds in datasets:
            start = time.perf_counter()
            recs = run_closed_book(lm, ds, progress=False)
            per_q = (time.perf_counter() - start) / len(recs)
            n = len(recs)
            print(
                f"| {args.model} | {style} | {ds.name} | {n} "
                f"| {sum(r.correct for r in recs) / n:.3f} "
                f"| {sum(r.score.exact_match for r in recs) / n:.3f} "
                f"| {sum(r.score.f1 for r in recs) / n:.3f} "
                f"| {sum(r.stop_reason == 'length' for r in recs) / n:.2f} "
                f"| {sum(r.score.echo_rejected for r in recs)} | {per_q:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
