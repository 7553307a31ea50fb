"""FAISS at scale: exact vs HNSW vs IVF-PQ on a synthetic million-vector set (issue 17).

The knowledge base picks its FAISS index by size (``KnowledgeBaseConfig.exact_search_max`` and
``hnsw_max``); this script measures what those thresholds trade: recall@10 against the exact
answer, build time, memory (serialised index bytes and the process RSS it adds) and single-query
latency p50/p99.

Data: ``--n`` unit vectors of ``--dim`` dimensions (default 1,000,000 x 384, the size of
all-MiniLM-L6-v2 embeddings) drawn from a seeded Gaussian mixture - ``--clusters`` centres, each
point a centre plus isotropic noise, then L2-normalised - so neighbourhoods are uneven as in real
embeddings rather than uniform on the sphere (where every approximate index looks worse than it
is on text). Queries (``--queries``, default 1,000) come from the same mixture, from an
independent random stream. Ground truth is ``IndexFlatIP`` on the same vectors.

Indexes and settings (the knowledge base's defaults):

- ``flat``: ``IndexFlatIP`` (exact).
- ``hnsw``: ``IndexHNSWFlat``, M 32, efConstruction 200, efSearch 64 / 128 / 256.
- ``ivf_pq``: ``IndexIVFPQ``, nlist = 4 * sqrt(n) rounded to a power of two, 48 sub-quantizers of
  8 bits (48 bytes a vector), trained on min(n, 40 * nlist) vectors; nprobe 16 / 64.

Latency is measured one query at a time with one FAISS thread (a request's view); builds use all
threads. Results are appended to ``--json`` as each index finishes, so a long run that is stopped
keeps what it measured.

Usage:
    nice -n 5 python benchmarks/faiss_scale.py [--n 1000000] [--json benchmarks/out/faiss.json]
    python benchmarks/faiss_scale.py --n 20000 --queries 200      # a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "out" / "faiss_scale.json"


def rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``), in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mixture(n: int, dim: int, centres: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``n`` normalised points of the Gaussian mixture, generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 100_000
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        labels = rng.integers(0, len(centres), size=stop - start)
        block = centres[labels] + sigma * rng.standard_normal((stop - start, dim), np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # sigma per coordinate: noise norm ~ sigma * sqrt(dim); 1.0 / sqrt(dim) * spread keeps a point
    # about as close to its centre as to a random direction at spread 1 (overlapping clusters).
    sigma = args.spread / math.sqrt(args.dim)
    base = mixture(args.n, args.dim, centres, sigma, args.seed + 1)
    queries = mixture(args.queries, args.dim, centres, sigma, args.seed + 2)
    return base, queries


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(
        len(set(a[:k].tolist()) & set(t[:k].tolist())) for a, t in zip(ids, truth, strict=True)
    )
    return hits / (k * len(truth))


def latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """p50 and p99 milliseconds of single-query search with one thread, and the results."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:5], k)  # warm caches
        times, ids = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, row = index.search(q[None, :], k)
            times.append((time.perf_counter() - t0) * 1000)
            ids.append(row[0])
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.array(ids)


def measure(
    name: str,
    build: Any,
    searches: list[tuple[str, Any]],
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray | None,
    k: int,
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = build(base)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_added = rss_bytes() - rss0
    size = index_bytes(index)
    rows, first_ids = [], None
    for label, setup in searches:
        setup(index)
        p50, p99, ids = latency(index, queries, k)
        first_ids = ids if first_ids is None else first_ids
        rows.append(
            {
                "index": name,
                "search": label,
                "build_s": round(build_s, 1),
                "index_bytes": size,
                "rss_added_bytes": rss_added,
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "recall_at_10": None if truth is None else round(recall_at(ids, truth, k), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    del index
    gc.collect()
    return rows, first_ids


def build_flat(base: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index


def make_hnsw(m: int, ef_construction: int) -> Any:
    def build(base: np.ndarray) -> faiss.Index:
        index = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(base)
        return index

    return build


def ivf_nlist(n: int) -> int:
    """4 * sqrt(n), rounded to a power of two (FAISS's guideline is 4 to 16 * sqrt(n))."""
    return max(1, 2 ** round(math.log2(4 * math.sqrt(n))))


def make_ivfpq(pq_m: int, seed: int) -> Any:
    def build(base: np.ndarray) -> faiss.Index:
        n, dim = base.shape
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        train_n = min(n, 40 * nlist)  # FAISS warns below 39 per centroid
        sample = np.random.default_rng(seed).choice(n, size=train_n, replace=False)
        index.train(base[np.sort(sample)])
        index.add(base)
        return index

    return build


def set_ef(ef: int) -> Any:
    def setup(index: faiss.Index) -> None:
        index.hnsw.efSearch = ef

    return setup


def set_nprobe(nprobe: int) -> Any:
    def setup(index: faiss.Index) -> None:
        index.nprobe = nprobe

    return setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--pq-m", type=int, default=48)
    parser.add_argument(
        "--only", nargs="*", default=["flat", "ivf_pq", "hnsw"], choices=["flat", "ivf_pq", "hnsw"]
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    t0 = time.perf_counter()
    base, queries = make_data(args)
    data_s = time.perf_counter() - t0
    meta = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "clusters": args.clusters,
        "spread": args.spread,
        "seed": args.seed,
        "threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": os.getloadavg()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data_s": round(data_s, 1),
        "vectors_bytes": int(base.nbytes),
    }
    print(json.dumps(meta), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"meta": meta, "rows": []}

    def save() -> None:
        report["meta"]["load_average_end"] = os.getloadavg()[0]
        report["meta"]["peak_rss_bytes"] = peak_rss_bytes()
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    # Ground truth: exact search, batched (all threads).
    flat = build_flat(base)
    _, truth = flat.search(queries, args.k)
    del flat
    gc.collect()

    plan: dict[str, tuple[Any, list[tuple[str, Any]]]] = {
        "flat": (build_flat, [("exact", lambda index: None)]),
        "ivf_pq": (
            make_ivfpq(args.pq_m, args.seed),
            [(f"nlist {ivf_nlist(args.n)}, nprobe {p}", set_nprobe(p)) for p in (16, 64)],
        ),
        "hnsw": (
            make_hnsw(args.hnsw_m, args.ef_construction),
            [(f"M {args.hnsw_m}, efSearch {ef}", set_ef(ef)) for ef in (64, 128, 256)],
        ),
    }
    for name in args.only:
        build, searches = plan[name]
        rows, _ = measure(name, build, searches, base, queries, truth, args.k)
        report["rows"].extend(rows)
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
