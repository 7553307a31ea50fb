"""Load test of ``knowgate serve``: concurrent clients, with and without micro-batching.

Starts two real servers on loopback in subprocesses - micro-batched (``--max-batch``, default 8)
and one-at-a-time (``--max-batch 1``) - with the same config: SmolLM2-135M, a knowledge base
built from this project's ``docs/``, and an A/B experiment logging every request to a SQLite
decision log. ``--workload ab`` (default) is the README's test, plain RAG against the bundled
gate, where most requests retrieve and prefill a prompt with passages; ``--workload
closed-book`` answers every request closed-book (the bundled gate at threshold 0 against
never-retrieve), where the model's work is the gate's prefill and the decode steps. Questions:
PopQA (shared data) mixed with questions about knowgate. For each number of concurrent
clients, both servers get the same requests (same questions, same unit ids, so the same arms):
each client sends its share one after another (closed loop, no think time) to
``/v1/chat/completions``. Latency is the client-observed wall time of one request (send to last
byte of the response), so it includes queueing. Throughput is completed requests over the
cell's wall time. After the run each server is stopped with SIGTERM (graceful shutdown) and its
decision log's rows are counted against the requests sent.

Bounded: each cell sends ``max(--min-requests, clients * --requests-per-client)`` requests
(rounded up to a multiple of the clients) and stops starting new ones after ``--cell-seconds``.

    python benchmarks/serving_load.py                       # 1, 4, 16, 64 clients, A/B
    python benchmarks/serving_load.py --workload closed-book --clients 1 16 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "load-gate-vs-rag"
KNOWGATE_QUESTIONS = (
    "What is the default gate mode of knowgate?",
    "Which knowgate command fits and calibrates a gating policy?",
    "Which environment variable sets knowgate's model cache directory?",
    "Which embedding model does the knowgate knowledge base use by default?",
    "What does knowgate serve return on /health/ready?",
    "How does knowgate decide whether to retrieve?",
)


@dataclass
class Cell:
    """One (mode, clients) measurement."""

    mode: str
    clients: int
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    retrieved: int = 0
    load_before: float = 0.0
    load_after: float = 0.0
    log_rows: int | None = None
    stopped_early: bool = False

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def questions(limit: int) -> list[str]:
    """knowgate questions (the knowledge base answers them) mixed with PopQA (shared data)."""
    pool = list(KNOWGATE_QUESTIONS)
    try:
        from knowgate.evaluation.datasets import default_data_dir, load_dataset

        popqa = load_dataset("popqa_random", limit=limit, data_dir=default_data_dir())
        general = [e.question for e in popqa]
    except Exception as exc:  # no shared data: the demo's general questions
        print(f"(PopQA not available: {exc}; using general questions of the demo)")
        general = [
            "What is the capital of France?",
            "Who wrote Romeo and Juliet?",
            "What is the largest planet in the solar system?",
        ]
    # Interleave: one knowgate question for every few general ones.
    mixed: list[str] = []
    for i, q in enumerate(general):
        mixed.append(q)
        if i % 3 == 2:
            mixed.append(pool[(i // 3) % len(pool)])
    return mixed


def build_kb(directory: Path) -> None:
    from knowgate import KnowledgeBase

    KnowledgeBase.build([ROOT / "docs"], progress=False).save(directory)


BUNDLED = ROOT / "configs" / "policies" / "smollm2-135m.json"
WORKLOADS = {
    # The A/B test of the README: plain RAG against the bundled gate (which retrieves for most
    # of these questions: SmolLM2 knows little). Most requests prefill a prompt with passages.
    "ab": ("rag", "{name: always}", "gate", f"{{path: {BUNDLED}}}"),
    # Every request answered closed-book: the bundled gate at threshold 0 (it computes every
    # signal, then keeps the answer) against never-retrieve. The model work is the gate's
    # prefill and the answer's decode steps.
    "closed-book": ("never", "{name: never}", "gate", f"{{path: {BUNDLED}, threshold: 0.0}}"),
}


def write_config(work: Path, mode: str, kb: Path, workload: str) -> Path:
    path = work / f"{mode}.yaml"
    log = work / f"{mode}.sqlite"
    arm1, policy1, arm2, policy2 = WORKLOADS[workload]
    path.write_text(
        f"""retrieval:
  knowledge_base: {kb}
experiment:
  name: {EXPERIMENT}
  arms:
    {arm1}:
      policy: {policy1}
    {arm2}:
      policy: {policy2}
  decision_log: {log}
""",
        encoding="utf-8",
    )
    return path


def start_server(config: Path, port: int, args: argparse.Namespace, max_batch: int, log: Path):
    cmd = [
        sys.executable,
        "-m",
        "knowgate",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-queue",
        str(args.max_queue),
        "--timeout",
        str(args.timeout),
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = log.open("w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout} s")


async def drive(
    url: str, cell: Cell, requests: list[tuple[str, str]], clients: int, limit_s: float
) -> None:
    """``clients`` closed-loop clients; client k sends requests[k::clients] in order."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as http:
        start = time.perf_counter()

        async def client(k: int) -> None:
            for question, unit in requests[k::clients]:
                if time.perf_counter() - start > limit_s:
                    cell.stopped_early = True
                    return
                body = {
                    "model": "knowgate",
                    "messages": [{"role": "user", "content": question}],
                    "user": unit,
                }
                cell.sent += 1
                t = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    name = type(exc).__name__
                    cell.errors[name] = cell.errors.get(name, 0) + 1
                    continue
                elapsed = (time.perf_counter() - t) * 1000.0
                if r.status_code != 200:
                    key = f"{r.status_code} {r.json().get('error', {}).get('code')}"
                    cell.errors[key] = cell.errors.get(key, 0) + 1
                    continue
                cell.ok += 1
                cell.latencies_ms.append(elapsed)
                trace = r.json()["knowgate"]
                cell.retrieved += bool(trace["passages"])
                serving = trace["serving"]
                cell.batch_sizes.append(serving["batch_size"])
                cell.queue_ms.append(serving["queue_ms"])

        await asyncio.gather(*(client(k) for k in range(clients)))
        cell.seconds = time.perf_counter() - start


def count_rows(log: Path) -> dict[str, int]:
    """Decision-log rows per unit-id prefix (``c16-...``: the 16-client cell)."""
    from knowgate.experiments import DecisionLog

    rows: dict[str, int] = {}
    with DecisionLog(log, create=False) as dl:
        for d in dl.decisions(EXPERIMENT):
            prefix = d.unit_id.split("-", 1)[0]
            rows[prefix] = rows.get(prefix, 0) + 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="ab")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--cell-seconds", type=float, default=400.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of servers")
    parser.add_argument("--warmup", type=int, default=4, help="requests per server before")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="knowgate-load-"))
    print(f"work dir {work}; building the knowledge base from docs/ ...", flush=True)
    build_kb(work / "kb")
    pool = questions(200)
    modes = {"batched": args.max_batch, "one-at-a-time": 1}
    servers = {}
    for mode, max_batch in modes.items():
        port = free_port()
        proc = start_server(
            write_config(work, mode, work / "kb", args.workload),
            port,
            args,
            max_batch,
            work / f"{mode}.log",
        )
        servers[mode] = (f"http://127.0.0.1:{port}", proc)
    sent_total = dict.fromkeys(modes, 0)
    cells: list[Cell] = []
    try:
        for mode, (url, proc) in servers.items():
            wait_ready(url, proc)
            for i in range(args.warmup):  # first requests pay one-off costs; logged as "w"
                body = {
                    "model": "knowgate",
                    "messages": [{"role": "user", "content": pool[i % len(pool)]}],
                    "user": f"w-{i}",
                }
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=None)
                sent_total[mode] += 1
        print(f"servers ready; load average {loadavg():.2f}", flush=True)
        for n, clients in enumerate(args.clients):
            total = max(args.min_requests, clients * args.requests_per_client)
            total = -(-total // clients) * clients
            requests = [
                (pool[(i + 7 * n) % len(pool)], f"c{clients}-client{i % clients}")
                for i in range(total)
            ]
            # Alternate which mode goes first, so slow drifts of the machine's load even out.
            order = list(modes) if n % 2 == 0 else list(reversed(modes))
            for mode in order:
                url, _ = servers[mode]
                cell = Cell(mode, clients, load_before=loadavg())
                asyncio.run(drive(url, cell, requests, clients, args.cell_seconds))
                cell.load_after = loadavg()
                sent_total[mode] += cell.sent
                cells.append(cell)
                print(
                    f"{mode:>13} {clients:>3} clients: {cell.ok}/{cell.sent} ok, "
                    f"{cell.throughput:.2f} req/s, p50 {cell.pct(50):.0f} ms, p99 "
                    f"{cell.pct(99):.0f} ms, load {cell.load_before:.1f}->{cell.load_after:.1f}",
                    flush=True,
                )
    finally:
        for _, proc in servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # graceful: finish, drain, flush the log
        for _, proc in servers.values():
            proc.wait(timeout=300)
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -15 either
    # way; the server's log says whether the shutdown completed.
    exits = {
        m: "graceful"
        if "Application shutdown complete" in (work / f"{m}.log").read_text()
        else f"exit {proc.returncode}, shutdown incomplete"
        for m, (_, proc) in servers.items()
    }
    logged = {m: count_rows(work / f"{m}.sqlite") for m in modes}
    for cell in cells:
        cell.log_rows = logged[cell.mode].get(f"c{cell.clients}", 0)
    report(cells, logged, sent_total, exits, args)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "cells": [asdict(c) for c in cells],
                    "logged": logged,
                    "sent": sent_total,
                    "exit_codes": exits,
                },
                indent=2,
            )
        )


def report(
    cells: list[Cell],
    logged: dict[str, dict[str, int]],
    sent: dict[str, int],
    exits: dict[str, str],
    args: argparse.Namespace,
) -> None:
    print()
    print(
        "| mode | clients | requests | errors | throughput req/s | p50 ms | p95 ms | p99 ms "
        "| retrieved | mean batch | queue p50 ms | log rows | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in sorted(cells, key=lambda c: (c.clients, c.mode != "batched")):
        errors = sum(c.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in c.errors.items())})" if errors else ""
        print(
            f"| {c.mode} | {c.clients} | {c.sent} | {errors}{detail} | {c.throughput:.2f} "
            f"| {c.pct(50):,.0f} | {c.pct(95):,.0f} | {c.pct(99):,.0f} "
            f"| {c.retrieved / c.ok if c.ok else float('nan'):.0%} "
            f"| {np.mean(c.batch_sizes) if c.batch_sizes else float('nan'):.1f} "
            f"| {np.median(c.queue_ms) if c.queue_ms else float('nan'):,.0f} "
            f"| {c.log_rows}/{c.sent} | {c.load_before:.1f}-{c.load_after:.1f} |"
        )
    for mode in sent:
        rows = sum(logged[mode].values())
        print(
            f"{mode}: {rows} decision-log rows for {sent[mode]} requests sent (warm-up included); "
            f"shutdown: {exits[mode]}"
        )
    by = {(c.mode, c.clients): c for c in cells}
    single = by.get(("one-at-a-time", 1))
    if single is None or 16 not in {c.clients for c in cells}:
        return
    batch1 = single.pct(50)
    b16, o16 = by[("batched", 16)], by[("one-at-a-time", 16)]
    ratio = b16.throughput / o16.throughput if o16.throughput else float("nan")
    p99_ratio = b16.pct(99) / batch1
    print(
        f"\n16 clients: throughput {ratio:.2f}x the one-at-a-time server (target >= 2.5x); "
        f"p99 {b16.pct(99):,.0f} ms = {p99_ratio:.2f}x the batch-1 latency "
        f"({batch1:,.0f} ms: one client, one-at-a-time, p50) (target <= 3x); errors "
        f"{sum(b16.errors.values())}; log rows {b16.log_rows}/{b16.sent}"
    )


if __name__ == "__main__":
    main()
