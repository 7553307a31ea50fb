"""Cost of the A/B machinery per request: assignment, decision-log commits, report building.

Measures, on this machine's disk:
  1. assignment (SHA-256 bucket + arm lookup) per unit;
  2. commit latency of one logged request (synchronous FULL and NORMAL);
  3. rows/s when route_batch logs batches of 8;
  4. rows/s with 8 threads sharing one log;
  5. building the report on a log of N requests with outcomes.

    python benchmarks/ab_decision_log.py [--rows 2000] [--report-rows 100000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from knowgate.experiments import DecisionLog, DecisionRow, Experiment, Outcome, build_report
from knowgate.policy import build_policy


def two_arm_experiment() -> Experiment:
    gate = build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.4
    )
    return Experiment("bench", {"control": build_policy("always"), "gate": gate})


def synthetic_row(exp: Experiment, request_id: str, unit: str, latency_ms: float = 300.0):
    """A row shaped like the router's (features of a real request: ~60 floats)."""
    a = exp.assign(unit)
    retrieve = a.arm == "control"
    return DecisionRow(
        request_id=request_id,
        experiment=exp.name,
        arm=a.arm,
        unit_id=a.unit_id,
        unit_id_source=a.unit_id_source,
        bucket=a.bucket,
        policy_id=a.policy_id,
        config_hash=a.config_hash,
        retrieve=retrieve,
        retrieved=retrieve,
        lm_calls=2 if retrieve else 1,
        retriever_calls=int(retrieve),
        latency_ms=latency_ms,
        features={f"feature_{i}": i / 60 for i in range(60)},
        calls={"lm": 2 if retrieve else 1, "retriever": int(retrieve)},
        timings_ms={"prefill": 40.0, "decode": 200.0, "total": latency_ms},
        query="Who was the director of the film in question, and when was it released?",
        answer="Some Director, in 1987.",
        model="smollm2-135m",
    )


def bench_assign(n: int) -> float:
    exp = two_arm_experiment()
    ids = [f"user-{i}" for i in range(n)]
    start = time.perf_counter()
    for u in ids:
        exp.assign(u)
    return (time.perf_counter() - start) / n * 1e6


def bench_single_commits(path: Path, n: int, sync: str) -> tuple[float, float]:
    exp = two_arm_experiment()
    rows = [synthetic_row(exp, f"s{i}", f"u{i}") for i in range(n)]
    times = []
    with DecisionLog(path, synchronous=sync) as log:  # type: ignore[arg-type]
        log.register(exp)
        for r in rows:
            t = time.perf_counter()
            log.record_rows([r])
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), float(np.quantile(times, 0.95))


def bench_batches(path: Path, n: int, batch: int) -> float:
    exp = two_arm_experiment()
    rows = [synthetic_row(exp, f"b{i}", f"u{i}") for i in range(n)]
    with DecisionLog(path) as log:
        log.register(exp)
        t = time.perf_counter()
        for i in range(0, n, batch):
            log.record_rows(rows[i : i + batch])
        return n / (time.perf_counter() - t)


def bench_threads(path: Path, n: int, threads: int) -> float:
    exp = two_arm_experiment()
    per = n // threads
    with DecisionLog(path) as log:
        log.register(exp)

        def work(t: int) -> None:
            for i in range(per):
                log.record_rows([synthetic_row(exp, f"t{t}-{i}", f"u{i}")])

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        elapsed = time.perf_counter() - start
        assert log.count() == per * threads
    return per * threads / elapsed


def bench_report(path: Path, n: int) -> float:
    exp = two_arm_experiment()
    rng = np.random.default_rng(0)
    with DecisionLog(path, synchronous="NORMAL") as log:
        log.register(exp)
        rows = [
            synthetic_row(exp, f"r{i}", f"u{i % 5000}", latency_ms=float(rng.lognormal(6, 0.4)))
            for i in range(n)
        ]
        log.record_rows(rows)
        log.record_outcomes([Outcome(r.request_id, correct=bool(rng.random() < 0.5)) for r in rows])
        t = time.perf_counter()
        build_report(log, exp.name)
        return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--report-rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {sys.version[:6]}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        print(f"assignment: {bench_assign(100_000):.2f} us per unit")
        for sync in ("FULL", "NORMAL"):
            p50, p95 = bench_single_commits(d / f"single-{sync}.sqlite", args.rows, sync)
            print(f"one-row commit, synchronous={sync}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")
        rate = bench_batches(d / "batch.sqlite", args.rows * 4, 8)
        print(f"batches of 8 (FULL): {rate:,.0f} rows/s")
        rate = bench_threads(d / "threads.sqlite", args.rows, 8)
        print(f"8 threads, one-row commits (FULL): {rate:,.0f} rows/s")
        secs = bench_report(d / "report.sqlite", args.report_rows)
        print(f"report on {args.report_rows:,} requests with outcomes: {secs:.2f} s")


if __name__ == "__main__":
    main()
