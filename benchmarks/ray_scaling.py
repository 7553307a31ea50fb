"""Ray scaling of the index build: passages/s locally and on Ray with 1 and 2 workers (issue 17).

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

Usage:
    nice -n 5 python benchmarks/ray_scaling.py [--n 1000] [--workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
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
DEFAULT_JSON = ROOT / "benchmarks" / "out" / "ray_scaling.json"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts workers at niceness 15 by default: on a shared machine that starves them, and
    # the comparison with the local path (this process's priority) would measure the scheduler.
    os.environ.setdefault("RAY_worker_niceness", "0")
    docs = read_docs(args.corpus, args.n)
    queries = [d.title or d.text[:60] for d in docs[:: max(1, len(docs) // 20)]][:20]
    config = KnowledgeBaseConfig()
    report: dict[str, Any] = {
        "meta": {
            "passages": len(docs),
            "corpus": str(args.corpus.name),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_start": os.getloadavg()[0],
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "runs": [],
    }

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
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
