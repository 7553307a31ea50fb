"""Retrieval recall, latency and footprint of the knowledge base on the union corpus.

Builds (or, with ``--reuse``, loads) one knowledge base over every file in
``../shared/data/corpus`` (11,205 passages), then measures, for the ``dense``, ``bm25`` and
``hybrid`` modes side by side:

- recall@1/5/10: the share of questions with at least one ``metadata.evidence_ids`` passage in the
  top k (the "top-k retrieval accuracy" of DPR, Karpukhin et al. 2020), on ``qa/popqa_h2.jsonl``
  (all), a fixed 2,000-question sample of ``qa/squad_dev.jsonl`` (``random.Random(seed)``), and
  the questions with evidence in ``qa/popqa_random.jsonl`` and ``qa/nq_1000.jsonl``;
- query latency p50/p95: single queries, and batches of 32 (``search_batch``);
- build time, index size on disk, load time, and peak RSS of the whole run and of a fresh process
  that only loads the base and answers queries.

Usage:
    python benchmarks/retrieval_recall.py [--reuse] [--out benchmarks/out/union-kb]
        [--markdown benchmarks/results/retrieval.md]

The base is saved under ``benchmarks/out/`` (gitignored) for later benchmarks to reuse; the same
base is built by ``knowgate index build ../shared/data/corpus --out benchmarks/out/union-kb``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from knowgate.retrieval import KnowledgeBase, KnowledgeBaseConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "union-kb"
MODES = ("dense", "bm25", "hybrid")
KS = (1, 5, 10)
#: BM25 recall@5 on the union corpus, from ../shared/data/README.md (measured once, elsewhere).
REFERENCE_BM25_AT5 = {"popqa_h2": 0.99, "squad_dev": 0.90, "popqa_random": 0.91, "nq_1000": 0.91}


@dataclass
class QuestionSet:
    name: str
    questions: list[str]
    evidence: list[set[str]]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def question_sets(data: Path, squad_sample: int, seed: int) -> list[QuestionSet]:
    sets = []
    for name in ("popqa_h2", "squad_dev", "popqa_random", "nq_1000"):
        rows = [
            r
            for r in read_jsonl(data / "qa" / f"{name}.jsonl")
            if r["metadata"].get("evidence_ids")
        ]
        if name == "squad_dev" and squad_sample < len(rows):
            picked = sorted(random.Random(seed).sample(range(len(rows)), squad_sample))
            rows = [rows[i] for i in picked]
        sets.append(
            QuestionSet(
                name,
                [r["question"] for r in rows],
                [set(r["metadata"]["evidence_ids"]) for r in rows],
            )
        )
    return sets


def recall_at(kb: KnowledgeBase, qs: QuestionSet, mode: str) -> dict[int, float]:
    results = kb.search_batch(qs.questions, k=max(KS), mode=mode)
    out = {}
    for k in KS:
        hits = sum(
            bool({p.id for p in ranked[:k]} & gold)
            for ranked, gold in zip(results, qs.evidence, strict=True)
        )
        out[k] = hits / len(qs.questions)
    return out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def latency(
    variants: list[tuple[str, KnowledgeBase, str]],
    questions: list[str],
    n_single: int,
    n_batches: int,
) -> dict[str, dict[str, float]]:
    """Wall and CPU milliseconds per call, with the variants interleaved query by query.

    Interleaving (and rotating the order) spreads the noise of a shared machine evenly over the
    variants, so their differences stay meaningful even when absolute times are inflated.
    """
    for _, kb, mode in variants:
        kb.search_batch(questions[:32], k=5, mode=mode)  # warm-up (model load, caches)
    wall: dict[str, dict[str, list[float]]] = {
        n: {"single": [], "batch": []} for n, _, _ in variants
    }
    cpu: dict[str, dict[str, list[float]]] = {
        n: {"single": [], "batch": []} for n, _, _ in variants
    }
    calls = [("single", [q]) for q in questions[:n_single]]
    calls += [("batch", questions[b * 32 : (b + 1) * 32]) for b in range(n_batches)]
    for i, (kind, chunk) in enumerate(calls):
        rotated = variants[i % len(variants) :] + variants[: i % len(variants)]
        for name, kb, mode in rotated:
            t, c = time.perf_counter(), time.process_time()
            if kind == "single":
                kb.search(chunk[0], k=5, mode=mode)
            else:
                kb.search_batch(chunk, k=5, mode=mode)
            wall[name][kind].append((time.perf_counter() - t) * 1000)
            cpu[name][kind].append((time.process_time() - c) * 1000)
    return {
        name: {
            "single_p50": percentile(wall[name]["single"], 50),
            "single_p95": percentile(wall[name]["single"], 95),
            "single_cpu_p50": percentile(cpu[name]["single"], 50),
            "batch32_p50": percentile(wall[name]["batch"], 50),
            "batch32_p95": percentile(wall[name]["batch"], 95),
            "batch32_cpu_p50": percentile(cpu[name]["batch"], 50),
        }
        for name, _, _ in variants
    }


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is reset by exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_probe(directory: Path, data: Path) -> None:
    """Child process: load the base, answer 200 hybrid queries, report load time and peak RSS."""
    t = time.perf_counter()
    kb = KnowledgeBase.load(directory)
    load_s = time.perf_counter() - t
    rss_loaded = peak_rss_mib()
    questions = [r["question"] for r in read_jsonl(data / "qa" / "nq_1000.jsonl")][:200]
    for q in questions:
        kb.search(q, k=5, mode="hybrid")
    result = {"load_s": load_s, "rss_after_load_mib": rss_loaded, "peak_rss_mib": peak_rss_mib()}
    print(json.dumps(result))


def hnsw_copy(kb: KnowledgeBase, config: KnowledgeBaseConfig) -> tuple[KnowledgeBase, float]:
    """The same base with its exact index replaced by HNSW built from the stored vectors.

    Bases switch to HNSW only above ``exact_search_max`` passages; this measures what that
    switch costs in recall at our size, with the default HNSW parameters. It reaches into
    private attributes on purpose: no public API swaps the index of a base in place.
    """
    import copy

    from knowgate.retrieval.dense_index import DenseIndex

    vectors = kb._dense.index.reconstruct_n(0, len(kb))
    start = time.perf_counter()
    hnsw_config = kb.config.model_copy(update={"exact_search_max": 0, "hnsw": config.hnsw})
    index = DenseIndex.create(kb.dimension, hnsw_config)
    index.add(vectors)
    seconds = time.perf_counter() - start
    other = copy.copy(kb)
    other._dense = index
    return other, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the base is saved")
    parser.add_argument("--reuse", action="store_true", help="load --out instead of building")
    parser.add_argument("--squad-sample", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-single", type=int, default=200)
    parser.add_argument("--latency-batches", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, help="torch and FAISS threads (default: their own defaults)"
    )
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW comparison")
    parser.add_argument(
        "--skip-recall", action="store_true", help="only latency and footprint (light CPU use)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--serve-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_probe:
        serve_probe(args.out, args.data)
        return
    if not (args.data / "corpus").is_dir():
        sys.exit(f"shared data not found at {args.data} (pass --data)")

    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    load_before = os.getloadavg()[0]
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    config = KnowledgeBaseConfig()
    corpus = sorted((args.data / "corpus").iterdir())
    build_s = save_s = None
    if args.reuse:
        kb = KnowledgeBase.load(args.out, config)
    else:
        t = time.perf_counter()
        kb = KnowledgeBase.build(corpus, config)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        kb.save(args.out)
        save_s = time.perf_counter() - t
    rss_build = peak_rss_mib()
    probe_cmd = [sys.executable, __file__, "--serve-probe", "--out", str(args.out)]
    probe_out = subprocess.run(
        [*probe_cmd, "--data", str(args.data)], check=True, capture_output=True, text=True
    ).stdout
    probe = json.loads(probe_out.strip().splitlines()[-1])
    sets = question_sets(args.data, args.squad_sample, args.seed)
    variants: list[tuple[str, KnowledgeBase, str]] = [(m, kb, m) for m in MODES]
    hnsw_s = None
    if not args.no_hnsw:
        hnsw_kb, hnsw_s = hnsw_copy(kb, config)
        variants.append(("dense-hnsw", hnsw_kb, "dense"))

    emit(f"## Retrieval: union corpus ({len(kb):,} passages)")
    emit()
    emit(
        f"- date: {datetime.now(UTC).date().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores shared with other jobs (1-min load average "
        f"{load_before:.1f} at start), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    emit(f"- command: `python benchmarks/retrieval_recall.py {' '.join(sys.argv[1:])}`".strip())
    emit(f"- base: `{kb!r}`")
    emit(
        "- question sets: "
        + ", ".join(f"{s.name} {len(s.questions)}" for s in sets)
        + f" (squad_dev: fixed sample, seed {args.seed})"
    )
    emit()
    names = [name for name, _, _ in variants]
    recall_s = None
    if not args.skip_recall:
        emit("### Recall (share of questions with an evidence passage in the top k)")
        emit()
        header = "| set | n | " + " | ".join(f"{n} @{k}" for n in names for k in KS)
        emit(header + " | README BM25 @5 |")
        emit("|" + "---|" * (header.count("|") + 1))
        recall: dict[str, dict[str, dict[int, float]]] = {}
        t = time.perf_counter()
        for qs in sets:
            recall[qs.name] = {name: recall_at(base, qs, mode) for name, base, mode in variants}
            cells = [f"{recall[qs.name][n][k]:.3f}" for n in names for k in KS]
            reference = REFERENCE_BM25_AT5[qs.name]
            emit(
                f"| {qs.name} | {len(qs.questions)} | "
                + " | ".join(cells)
                + f" | {reference:.2f} |"
            )
        recall_s = time.perf_counter() - t
        emit()
        for n in names:
            ok = all(recall[s.name][n][5] >= REFERENCE_BM25_AT5[s.name] for s in sets)
            mean5 = statistics.fmean(recall[s.name][n][5] for s in sets)
            emit(
                f"- {n}: mean recall@5 {mean5:.3f}; at or above the README BM25 recall@5 on all "
                f"four sets: {'yes' if ok else 'no'}"
            )
        emit()
    emit("### Latency (ms per call, k=5; variants interleaved query by query)")
    emit()
    emit(
        "single = one `search`; batch32 = one `search_batch` of 32 questions; "
        "CPU = process CPU time of the call (all threads), which machine load inflates less."
    )
    emit()
    emit(
        "| mode | single p50 | single p95 | single CPU p50 | batch32 p50 | batch32 p95 "
        "| batch32 CPU p50 | batch32 per query p50 |"
    )
    emit("|---|---|---|---|---|---|---|---|")
    latency_questions = [q for s in sets for q in s.questions]
    random.Random(args.seed).shuffle(latency_questions)
    lat = latency(variants, latency_questions, args.latency_single, args.latency_batches)
    for name in names:
        row = lat[name]
        emit(
            f"| {name} | {row['single_p50']:.1f} | {row['single_p95']:.1f} "
            f"| {row['single_cpu_p50']:.1f} | {row['batch32_p50']:.1f} "
            f"| {row['batch32_p95']:.1f} | {row['batch32_cpu_p50']:.1f} "
            f"| {row['batch32_p50'] / 32:.2f} |"
        )
    emit()
    emit("### Build and footprint")
    emit()
    size = dir_size(args.out)
    files = {
        p.relative_to(args.out).as_posix(): p.stat().st_size
        for p in sorted(args.out.rglob("*"))
        if p.is_file()
    }
    if build_s is not None:
        emit(
            f"- build (read corpus, load model, embed, FAISS + BM25 index): {build_s:.1f} s; "
            f"save: {save_s:.2f} s"
        )
    if hnsw_s is not None:
        emit(
            f"- HNSW graph over the same vectors (M={config.hnsw.m}, efConstruction="
            f"{config.hnsw.ef_construction}, efSearch={config.hnsw.ef_search}): {hnsw_s:.1f} s"
        )
    big_files = ", ".join(f"{name} {b / 2**20:.1f}" for name, b in files.items() if b > 2**20)
    emit(f"- index size on disk: {size / 2**20:.1f} MiB ({big_files} MiB)")
    emit(
        "- load (validate manifest + checksums, read FAISS, documents, BM25; no embedding): "
        f"{probe['load_s']:.2f} s"
    )
    emit(
        f"- peak RSS: this run {rss_build:.0f} MiB before the recall evaluation "
        f"({'load' if args.reuse else 'build, incl. the embedding model'}); a fresh process "
        f"that loads the base: {probe['rss_after_load_mib']:.0f} MiB after load, "
        f"{probe['peak_rss_mib']:.0f} MiB peak after 200 hybrid queries (embedding model loaded)"
    )
    if recall_s is not None:
        emit(
            f"- recall evaluation, {sum(len(s.questions) for s in sets)} questions x "
            f"{len(variants)} variants: {recall_s:.1f} s"
        )
    emit(f"- 1-min load average at the end: {os.getloadavg()[0]:.1f}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
