"""Ray scaling: passages/s of the index build, questions/s of the closed-book branch (issue 17).

**Index build** (default).

Builds the same knowledge base three ways over the first ``--n`` passages of a corpus file
(default ``../shared/data/corpus/squad_dev.jsonl``) and records, for each:

- wall time of ``KnowledgeBase.build`` (ingest, embedding, FAISS, BM25) and passages/s;
- for Ray, the time to start the local Ray instance (reported apart) and the peak RSS of each
  embedding actor process (sampled with psutil every 0.2 s), against the peak RSS this process
  reaches when it embeds locally;
- that every Ray-built base returns the same top-5 passages as the local one on 20 passages'
  titles used as queries (a correctness check of the run itself).

The local build runs first in this process and pays the model load, as each Ray actor does, so
"Ray overhead" = Ray wall time - local wall time at one worker is start-up and data movement.

**Closed-book questions** (``--questions N``): the first ``N`` questions of ``--data``
(default ``../shared/data/qa/popqa_random.jsonl``) answered closed-book with every signal, as
``knowgate calibrate`` runs them, into a fresh cache each time: locally in this process (all
cores, the model loaded once), then on Ray with 1 and 2 actors (one model, one CPU and one torch
thread each; the driver appends the rows; ``--local-threads 1`` gives the local path one
thread too, the same share as one actor). For each: the model load, the answering wall time and
questions/s, Ray's start and the actors' model loads apart, each actor's peak RSS (its own
``getrusage``), the load average before and after, and whether every answer equals the local
one.

Usage:
    nice -n 5 python benchmarks/ray_scaling.py [--n 1000] [--workers 1 2] [--json out.json]
    python benchmarks/ray_scaling.py --questions 40 [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from knowgate.integrations.ray import RayRuntime, ray_runtime
from knowgate.integrations.ray.embedding import EmbeddingStats, RayEmbeddingConfig, ray_encoder
from knowgate.retrieval import Document, KnowledgeBase, KnowledgeBaseConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "squad_dev.jsonl"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "qa" / "popqa_random.jsonl"
DEFAULT_JSON = ROOT / "benchmarks" / "out" / "ray_scaling.json"
DEFAULT_QUESTIONS_JSON = ROOT / "benchmarks" / "out" / "ray_questions.json"


class RssSampler:
    """Peak RSS of every Ray embedding actor process, sampled in a thread."""

    def __init__(self, marker: str = "_EmbedActor") -> None:
        self.marker = marker
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                mem = proc.info.get("memory_info")
                if self.marker in cmd and mem is not None:
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), mem.rss)
            self._stop.wait(0.2)


def read_docs(path: Path, n: int) -> list[Document]:
    docs = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            docs.append(Document(str(row["id"]), str(row.get("title", "")), str(row["text"])))
            if len(docs) == n:
                break
    return docs


def top_ids(kb: KnowledgeBase, queries: list[str]) -> list[list[str]]:
    return [[p.id for p in hits] for hits in kb.search_batch(queries, k=5, mode="dense")]


def question_runs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Closed-book questions/s locally, then on Ray with each worker count."""
    import torch

    from knowgate.evaluation.branches.closed_book import run_closed_book
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.integrations.ray.batch import BatchStats, RayBatchConfig, RayBatchRunner
    from knowgate.models import LanguageModel

    if args.local_threads:
        torch.set_num_threads(args.local_threads)
    dataset = load_dataset(args.data, limit=args.questions)
    report["meta"].update(
        questions=len(dataset),
        data=args.data.name,
        model=args.model,
        local_torch_threads=torch.get_num_threads(),
    )
    start = time.perf_counter()
    lm = LanguageModel.load(args.model)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        local = run_closed_book(lm, dataset, cache_dir=Path(scratch) / "local", progress=False)
        local_s = time.perf_counter() - start
        report["runs"].append(
            {
                "path": "local",
                "workers": 1,
                "model_load_s": round(load_s, 1),
                "seconds": round(local_s, 1),
                "questions_per_s": round(len(dataset) / local_s, 3),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            }
        )
        print(json.dumps(report["runs"][-1]), flush=True)
        answers = [r.answer for r in local]
        for workers in args.workers:
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            stats = BatchStats()
            with ray_runtime(RayRuntime(num_cpus=workers, object_store_mb=300)):
                ray_start_s = time.perf_counter() - start
                with RayBatchRunner(lm.config, RayBatchConfig(workers=workers), stats) as runner:
                    records = run_closed_book(
                        lm,
                        dataset,
                        cache_dir=Path(scratch) / f"ray{workers}",
                        progress=False,
                        executor=runner,
                    )
            total_s = time.perf_counter() - start
            report["runs"].append(
                {
                    "path": "ray",
                    "workers": workers,
                    "ray_start_s": round(ray_start_s, 1),
                    "actor_model_load_s": round(stats.startup_seconds, 1),
                    "seconds": round(stats.seconds, 1),
                    "questions_per_s": round(stats.questions_per_second, 3),
                    "wall_s_with_start": round(total_s, 1),
                    "actor_peak_rss_mib": stats.actor_peak_rss_mib,
                    "same_answers_as_local": [r.answer for r in records] == answers,
                    "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                }
            )
            print(json.dumps(report["runs"][-1]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--questions", type=int, default=None, help="closed-book mode: N questions")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--local-threads", type=int, default=None, help="torch threads, local path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts workers at niceness 15 by default: on a shared machine that starves them, and
    # the comparison with the local path (this process's priority) would measure the scheduler.
    os.environ.setdefault("RAY_worker_niceness", "0")
    report: dict[str, Any] = {"meta": meta(), "runs": []}
    if args.questions is not None:
        question_runs(args, report)
        return write(report, args.json or DEFAULT_QUESTIONS_JSON)
    docs = read_docs(args.corpus, args.n)
    queries = [d.title or d.text[:60] for d in docs[:: max(1, len(docs) // 20)]][:20]
    config = KnowledgeBaseConfig()
    report["meta"].update(passages=len(docs), corpus=str(args.corpus.name))

    start = time.perf_counter()
    local = KnowledgeBase.build(docs, config, progress=False)
    local_s = time.perf_counter() - start
    local_ids = top_ids(local, queries)
    report["runs"].append(
        {
            "path": "local",
            "workers": 1,
            "seconds": round(local_s, 1),
            "passages_per_s": round(len(docs) / local_s, 2),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }
    )
    print(json.dumps(report["runs"][-1]), flush=True)

    for workers in args.workers:
        start = time.perf_counter()
        with ray_runtime(RayRuntime(num_cpus=workers, object_store_mb=300)):
            ray_start_s = time.perf_counter() - start
            stats = EmbeddingStats()
            settings = RayEmbeddingConfig(workers=workers, block_size=args.block_size)
            encode = ray_encoder(config, settings, stats)
            with RssSampler() as sampler:
                t0 = time.perf_counter()
                kb = KnowledgeBase.build(docs, config, progress=False, encode=encode)
                build_s = time.perf_counter() - t0
        same = top_ids(kb, queries) == local_ids
        report["runs"].append(
            {
                "path": "ray",
                "workers": workers,
                "ray_start_s": round(ray_start_s, 1),
                "seconds": round(build_s, 1),
                "embed_seconds": round(stats.seconds, 1),
                "passages_per_s": round(len(docs) / build_s, 2),
                "actor_peak_rss_mib": sorted(v // 2**20 for v in sampler.peaks.values()),
                "same_top5_as_local": same,
            }
        )
        print(json.dumps(report["runs"][-1]), flush=True)
    return write(report, args.json or DEFAULT_JSON)


def meta() -> dict[str, Any]:
    """The machine, the date, the command and the load when the run starts."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": os.getloadavg()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def write(report: dict[str, Any], path: Path) -> int:
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
