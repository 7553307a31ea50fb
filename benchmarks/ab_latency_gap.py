"""How much longer the caller waits than the latency the decision log records.

The A/B report's latency is ``timings_ms["total"]``: the sum of the request's timed stages. This
routes questions one at a time under an experiment with a decision log, times each ``route``
call from outside, and prints the gap (caller wall time minus logged latency).

    python benchmarks/ab_latency_gap.py --kb runs/popqa_h2-kb [--requests 40]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from knowgate import KnowledgeBase, Router, RouterConfig
from knowgate.evaluation.datasets import default_data_dir, load_dataset
from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter
from knowgate.models import LanguageModel
from knowgate.policy import build_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, required=True, help="knowledge-base directory")
    parser.add_argument("--data", type=Path, default=None, help="shared data dir")
    parser.add_argument("--dataset", default="popqa_h2")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    kb = KnowledgeBase.load(args.kb)
    lm = LanguageModel.load(RouterConfig().model)
    questions = [
        e.question for e in load_dataset(args.dataset, data_dir=args.data or default_data_dir())
    ]
    random.Random(args.seed).shuffle(questions)
    gate = build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.4
    )
    experiment = Experiment("gap", {"always": build_policy("always"), "gate": gate}, salt="gap")
    walls, logged = [], []
    with DecisionLog(Path(tempfile.mkdtemp()) / "gap.sqlite") as log:
        router = ExperimentRouter(Router(lm, build_policy("always"), kb), experiment, log)
        router.route(questions[0], unit_id="warm-up")
        for i, question in enumerate(questions[1 : args.requests + 1]):
            start = time.perf_counter()
            routed = router.route(question, unit_id=f"user-{i}")
            walls.append((time.perf_counter() - start) * 1000)
            logged.append(routed.timings_ms["total"])
    wall, total = np.array(walls), np.array(logged)
    gap = wall - total
    print(
        f"{gap.size} requests: caller wall p50 {np.median(wall):.0f} ms, logged p50 "
        f"{np.median(total):.0f} ms; gap p50 {np.median(gap):.1f} ms, p95 "
        f"{np.quantile(gap, 0.95):.1f} ms, max {gap.max():.1f} ms; gap / wall p50 "
        f"{np.median(gap / wall):.2%}, max {(gap / wall).max():.2%}"
    )


if __name__ == "__main__":
    main()
