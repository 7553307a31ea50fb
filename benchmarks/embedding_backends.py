"""Embedding backends (torch, ONNX, ONNX int8): passages/s and retrieval recall, side by side.

Every backend embeds the same passages: the popqa_h2 corpus file (1,475 passages) and the first
``--squad-passages`` of the squad_dev corpus file (whole articles, in file order); the union
corpus (11,205) would take each backend most of an hour on two busy cores. Passages go to the
backends in chunks of 256, in turn, the order rotating each chunk, so the load of a shared
machine falls on all of them alike. Each backend's vectors then make a knowledge base (the same
documents, config and index; only ``embedding_backend`` differs), and recall@1/5/10 is measured
as ``retrieval_recall.py`` measures it (its ``question_sets`` and ``recall_at``) in dense and
hybrid mode, on the popqa_h2 questions and those of its fixed squad_dev sample whose evidence
is among the passages.

The issue's criterion: a faster backend must keep recall within 0.01 of torch's, i.e. no
recall@k of any set and mode may drop by more than 0.01.

Usage:
    python benchmarks/embedding_backends.py [--threads 2] [--squad-passages 500]
        [--markdown benchmarks/results/embedding_backends.md]

Export time is reported apart from throughput: an export is made once per model and backend
and cached (``$KNOWGATE_CACHE_DIR`` or the user cache directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import onnxruntime
import torch
from retrieval_recall import DEFAULT_DATA, KS, QuestionSet, question_sets, recall_at

from knowgate.retrieval import EmbeddingBackend, KnowledgeBase, KnowledgeBaseConfig
from knowgate.retrieval.corpus import collect_documents
from knowgate.retrieval.embedder import Embedder
from knowgate.retrieval.knowledge_base import _index_texts

CORPUS_FILES = ("popqa_h2.jsonl", "squad_dev.jsonl")
QUESTION_SETS = ("popqa_h2", "squad_dev")  # the sets whose evidence is in CORPUS_FILES
SQUAD_PREFIX = "sq_"  # squad_dev passage ids
BACKENDS: tuple[EmbeddingBackend, ...] = ("torch", "onnx", "onnx-int8")
RECALL_MODES = ("dense", "hybrid")
CHUNK = 256
TOLERANCE = 0.01


@dataclass
class Run:
    backend: EmbeddingBackend
    embedder: Embedder
    prepare_s: float
    model_file_mib: float | None
    export_s: float | None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    chunks: list[np.ndarray] = field(default_factory=list)


def prepare(backend: EmbeddingBackend, config: KnowledgeBaseConfig, warmup: list[str]) -> Run:
    """Load the model (and export or load the ONNX file), then embed a warm-up batch."""
    embedder = Embedder(
        config.embedding_model, device="cpu", batch_size=config.batch_size, backend=backend
    )
    start = time.perf_counter()
    embedder.encode(warmup)
    seconds = time.perf_counter() - start
    size = export_s = None
    if backend != "torch":
        model_file = embedder.onnx_encoder.model_file
        size = model_file.stat().st_size / 2**20
        marker = json.loads((model_file.parent / "knowgate-cache.json").read_text())
        export_s = float(marker["build_seconds"])  # when the cache entry was made
    return Run(backend, embedder, seconds, size, export_s)


def embed_interleaved(runs: list[Run], texts: list[str]) -> None:
    """Every backend embeds every chunk; the order of the backends rotates chunk by chunk."""
    for i, start in enumerate(range(0, len(texts), CHUNK)):
        chunk = texts[start : start + CHUNK]
        for run in runs[i % len(runs) :] + runs[: i % len(runs)]:
            wall, cpu = time.perf_counter(), time.process_time()
            run.chunks.append(run.embedder.encode(chunk))
            run.wall_s += time.perf_counter() - wall
            run.cpu_s += time.process_time() - cpu
        done = min(start + CHUNK, len(texts))
        print(f"  embedded {done}/{len(texts)} passages with every backend", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime, FAISS")
    parser.add_argument("--squad-passages", type=int, default=500)
    parser.add_argument("--squad-sample", type=int, default=2000, help="as retrieval_recall.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    names = [b.strip() for b in args.backends.split(",")]
    if names[0] != "torch" or any(b not in BACKENDS for b in names):
        sys.exit(f"--backends: torch first, then any of {', '.join(BACKENDS[1:])}")
    backends = [cast(EmbeddingBackend, b) for b in names]
    corpus = [args.data / "corpus" / name for name in CORPUS_FILES]
    if not all(path.is_file() for path in corpus):
        sys.exit(f"corpus files not found under {args.data / 'corpus'} (pass --data)")

    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count
    faiss.omp_set_num_threads(args.threads)
    load_start = os.getloadavg()
    base_config = KnowledgeBaseConfig(mode="dense")
    documents, _ = collect_documents(corpus, base_config)
    squad = [d for d in documents if d.id.startswith(SQUAD_PREFIX)]
    documents = [d for d in documents if not d.id.startswith(SQUAD_PREFIX)]
    documents += squad[: args.squad_passages]
    texts = _index_texts(documents, base_config)
    ids = {d.id for d in documents}
    sets = []
    for qs in question_sets(args.data, args.squad_sample, args.seed):
        keep = [i for i, gold in enumerate(qs.evidence) if gold & ids]
        if qs.name in QUESTION_SETS and keep:
            sets.append(
                QuestionSet(
                    qs.name, [qs.questions[i] for i in keep], [qs.evidence[i] for i in keep]
                )
            )

    print(f"preparing {', '.join(backends)} ...", flush=True)
    runs = [prepare(b, base_config, texts[:64]) for b in backends]
    print(f"embedding {len(texts)} passages ...", flush=True)
    embed_interleaved(runs, texts)
    vectors = {run.backend: np.concatenate(run.chunks) for run in runs}

    recall: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for run in runs:
        config = base_config.model_copy(update={"embedding_backend": run.backend})
        kb = KnowledgeBase.build(
            documents, config, progress=False, encode=lambda _texts, b=run.backend: vectors[b]
        )
        print(f"recall with {run.backend} ...", flush=True)
        recall[run.backend] = {
            mode: {qs.name: recall_at(kb, qs, mode) for qs in sets} for mode in RECALL_MODES
        }
    load_end = os.getloadavg()

    torch_run = runs[0]
    torch_rate = len(texts) / torch_run.wall_s
    cpu_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    emit("## Embedding backends: throughput and recall")
    emit()
    emit(
        f"- date: {datetime.now(UTC).date().isoformat()}; machine: {cpu_name}, "
        f"{os.cpu_count()} CPU cores shared with other jobs; 1/5/15-min load average "
        f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.1f}' for x in load_end)} at the end"
    )
    emit(
        f"- torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"{args.threads} threads for every backend (torch intra-op = ONNX Runtime intra-op)"
    )
    emit(f"- command: `python benchmarks/embedding_backends.py {' '.join(sys.argv[1:])}`".strip())
    emit(
        f"- passages: {len(texts):,} (all of corpus/popqa_h2.jsonl, the first "
        f"{min(args.squad_passages, len(squad))} of corpus/squad_dev.jsonl; title + text as the "
        f"base embeds them), batch {base_config.batch_size}, handed out in chunks of {CHUNK} "
        "to the backends in rotating order"
    )
    emit(
        "- questions: "
        + ", ".join(f"{s.name} {len(s.questions)}" for s in sets)
        + f" (those with evidence among the passages; squad_dev from retrieval_recall.py's "
        f"fixed sample of {args.squad_sample}, seed {args.seed}); exact (flat) index"
    )
    emit()
    emit("### Throughput")
    emit()
    emit(
        "| backend | passages/s | speed-up vs torch | CPU s per 1,000 passages | "
        "model file MiB | export s (once, cached) | load + first 64 passages s | "
        "cosine to torch: mean | min |"
    )
    emit("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        rate = len(texts) / run.wall_s
        cos = (vectors[run.backend] * vectors["torch"]).sum(axis=1)
        size = f"{run.model_file_mib:.0f}" if run.model_file_mib is not None else "-"
        export = f"{run.export_s:.0f}" if run.export_s is not None else "-"
        emit(
            f"| {run.backend} | {rate:.1f} | {rate / torch_rate:.2f}x | "
            f"{run.cpu_s / len(texts) * 1000:.1f} | {size} | {export} | {run.prepare_s:.1f} | "
            f"{cos.mean():.4f} | {cos.min():.4f} |"
        )
    emit()
    emit("### Recall (share of questions with an evidence passage in the top k)")
    emit()
    header = "| mode | set | n | " + " | ".join(
        f"{b} @{k}" if b == "torch" else f"{b} @{k} (delta)" for b in backends for k in KS
    )
    emit(header + " |")
    emit("|" + "---|" * (3 + len(backends) * len(KS)))
    worst: dict[str, float] = {b: 0.0 for b in backends[1:]}
    for mode in RECALL_MODES:
        for qs in sets:
            cells = []
            for b in backends:
                for k in KS:
                    value = recall[b][mode][qs.name][k]
                    if b == "torch":
                        cells.append(f"{value:.3f}")
                        continue
                    delta = value - recall["torch"][mode][qs.name][k]
                    worst[b] = min(worst[b], delta)
                    cells.append(f"{value:.3f} ({delta:+.3f})")
            emit(f"| {mode} | {qs.name} | {len(qs.questions)} | " + " | ".join(cells) + " |")
    emit()
    for b in backends[1:]:
        run = next(r for r in runs if r.backend == b)
        met = worst[b] >= -TOLERANCE - 1e-12
        emit(
            f"- {b}: {len(texts) / run.wall_s / torch_rate:.2f}x torch's passages/s; largest "
            f"recall drop {max(0.0, -worst[b]):.3f} (criterion: at most {TOLERANCE}): "
            f"{'met' if met else 'NOT met'}"
        )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
