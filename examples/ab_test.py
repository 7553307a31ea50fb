"""A/B test of two gating policies on simulated traffic, with outcomes from gold answers.

Control: always retrieve (classic RAG). Treatment: a single-signal gate that skips retrieval when
the model's next-token max-probability is high. Questions from a shared dataset are sent by
simulated users (each user always lands in the same arm), every request is logged to a SQLite
decision log, each answer is scored against the gold aliases (In-Accuracy, echo-guarded) and
recorded as an outcome, and the experiment report is printed.

The gate's threshold is the median of the signal on a held-out calibration slice (questions
that are not part of the traffic): an operating point of about 50% retrieval, chosen before any
traffic is seen.

Requests are routed one at a time, as they would arrive: in ``route_batch`` a request's latency
is its share of each batched stage, and batches that mix arms would skew the latency comparison.

    python examples/ab_test.py [--dataset popqa_h2] [--requests 300] [--users 100]
                               [--kb runs/popqa_h2-kb] [--log runs/ab_example.sqlite] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from knowgate import KnowledgeBase, Router, RouterConfig
from knowgate.evaluation.datasets import default_data_dir, load_dataset
from knowgate.evaluation.scoring import score_answer
from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter, Outcome, build_report
from knowgate.models import LanguageModel
from knowgate.policy import build_policy
from knowgate.signals import compute_features

# The corpus file that holds each dataset's evidence passages (shared/data/README.md).
CORPUS = {"popqa_h2": "popqa_h2.jsonl", "squad_dev": "squad_dev.jsonl"}
FEATURE = "next_token_max_prob"


def calibrated_gate(lm: LanguageModel, questions: list[str]):
    """Threshold at the median of the signal on held-out questions (~50% retrieval)."""
    values = []
    for start in range(0, len(questions), 16):
        pre = lm.prefill([lm.format_prompt(q) for q in questions[start : start + 16]])
        values += [compute_features(c)[FEATURE] for c in pre.captures]
        lm.decode(pre, rows=[])  # release the KV cache; no answers needed
    value = float(np.median(values))
    return build_policy("threshold", feature=FEATURE, direction="higher_is_known", value=value)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data dir")
    parser.add_argument("--dataset", default="popqa_h2", choices=sorted(CORPUS))
    parser.add_argument("--requests", type=int, default=300, help="simulated requests")
    parser.add_argument("--users", type=int, default=100, help="simulated users (units)")
    parser.add_argument("--calibration", type=int, default=60, help="held-out questions")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="corpus JSONL (default: the dataset's)"
    )
    parser.add_argument(
        "--kb", type=Path, default=None, help="knowledge-base dir: loaded if it exists, else built"
    )
    parser.add_argument("--log", type=Path, default=None, help="decision log (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    data_dir = args.data or default_data_dir()
    dataset = load_dataset(args.dataset, data_dir=data_dir)
    examples = list(dataset)
    random.Random(args.seed).shuffle(examples)
    calibration = examples[: args.calibration]
    traffic = examples[args.calibration : args.calibration + args.requests]

    if args.kb is not None and args.kb.exists():
        kb = KnowledgeBase.load(args.kb)
    else:
        corpus = args.corpus or data_dir / "corpus" / CORPUS[args.dataset]
        print(f"building the knowledge base from {corpus} ...", flush=True)
        kb = KnowledgeBase.build([corpus], progress=True)
        if args.kb is not None:
            kb.save(args.kb)
    lm = LanguageModel.load(RouterConfig().model)
    experiment = Experiment(
        "always-vs-gate",
        {
            "always": build_policy("always"),
            "gate": calibrated_gate(lm, [e.question for e in calibration]),
        },
        salt=f"example-{args.seed}",
    )
    log_path = args.log or Path(tempfile.mkdtemp(prefix="knowgate-ab-")) / "ab.sqlite"
    rng = random.Random(args.seed + 1)
    users = [f"user-{rng.randrange(args.users)}" for _ in traffic]

    with DecisionLog(log_path) as log:
        # The router answers; the experiment router on top picks each user's arm and logs.
        ab = ExperimentRouter(Router(lm, build_policy("always"), kb), experiment, log)
        for example, user in tqdm(
            list(zip(traffic, users, strict=True)), desc="traffic", unit="req"
        ):
            routed = ab.route(example.question, unit_id=user)  # logged with its arm
            s = score_answer(routed.answer, example.golden_answers, example.question)
            log.record_outcomes(
                [Outcome(routed.request_id, s.in_accuracy, s.f1, label_source="gold")]
            )
        report = build_report(log, experiment.name)
    print(f"decision log: {log_path}")
    text = json.dumps(report.to_dict(), indent=2) if args.json else report.to_text()
    print(text)
    return text


if __name__ == "__main__":
    main()
