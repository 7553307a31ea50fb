"""``knowgate bench``: both branches per question, every gating policy scored by cross-fitting."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import typer

from knowgate.cli.app import app
from knowgate.cli.common import (
    MODEL_HELP,
    RAY_ADDRESS_OPTION,
    RAY_OPTION,
    WORKERS_OPTION,
    check_calibration,
    console,
    dataset_names,
    load_language_model,
    ray_batches,
    user_errors,
)
from knowgate.models.config import DEFAULT_MODEL


def _parse_samples(
    specs: list[str], option: str = "--sample", *, nested: bool = False
) -> dict[str, tuple[int, ...]]:
    """``NAME=N`` specs; with ``nested``, ``NAME=N1/N2`` draws N2 from a sample of N1.

    Nesting lets a run reuse caches filled in stages (a seeded 250 of a seeded 1,000), which a
    fresh sample of 250 would not match.
    """
    from knowgate.errors import ConfigError

    example = "squad_dev=1000 or squad_dev=1000/250" if nested else "squad_dev=1000"
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, sizes = spec.partition("=")
        parts = sizes.split("/") if nested else [sizes]
        if (
            not sep
            or not name.strip()
            or not all(p.strip().isdigit() and int(p) >= 1 for p in parts)
        ):
            raise ConfigError(f"{option} {spec!r}: expected NAME=N with N >= 1 ({example})")
        out[name.strip()] = tuple(int(p) for p in parts)
    return out


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


@app.command()
def bench(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Router YAML whose model section (source, prompt - demonstrations included - and "
        "generation) is benchmarked instead of --model.",
    ),
    data: list[str] = typer.Option(
        ...,
        "--data",
        "-d",
        help="FlashRAG-style JSONL file, or a name under <data dir>/qa (popqa_random); repeat "
        "or comma-separate for several.",
    ),
    kb: Path = typer.Option(..., "--kb", help="Knowledge-base directory (knowgate index build)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for results and plots."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-fitting folds."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Use only the first N questions of each file."
    ),
    sample: list[str] = typer.Option(
        [],
        "--sample",
        help="NAME=N: a seeded random sample of N questions of that dataset (squad_dev=1000); "
        "NAME=N1/N2: N2 of a sample of N1 (reuses caches filled in stages).",
    ),
    sample_seed: int = typer.Option(0, "--sample-seed", help="Seed of --sample."),
    seed: int = typer.Option(0, "--seed", help="Split, tie-breaking and bootstrap seed."),
    k: int | None = typer.Option(
        None, "--k", min=1, help="Passages per question (default: the router's retrieval.k)."
    ),
    calibration: str = typer.Option(
        "sigmoid", "--calibration", help="isotonic | sigmoid | temperature | none"
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% intervals (0 = off)."
    ),
    singles: bool = typer.Option(
        True, "--singles/--no-singles", help="Also score every model feature alone."
    ),
    closed_book_cache: Path | None = typer.Option(
        None, "--closed-book-cache", help="Closed-book cache root (default runs/closed_book)."
    ),
    retrieval_cache: Path | None = typer.Option(
        None, "--retrieval-cache", help="Retrieval-branch cache root (default runs/retrieval)."
    ),
    peers: bool = typer.Option(
        True,
        "--peers/--no-peers",
        help="Also run the peers branch (K=5 sampled answers and the self-report prompt per "
        "question) and score sampling consistency and self-routing.",
    ),
    peer_sample: list[str] = typer.Option(
        [],
        "--peer-sample",
        help="NAME=N: run the peers branch on a seeded sample of N questions of that dataset "
        "(seed --sample-seed).",
    ),
    peer_cache: Path | None = typer.Option(
        None, "--peer-cache", help="Peers-branch cache root (default runs/peers)."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Root of the shared data for bare names ($KNOWGATE_DATA_DIR)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Prompts per pass."),
    timing_sample: int = typer.Option(
        40,
        "--timing-sample",
        min=0,
        help="Questions per dataset whose closed-book decode is re-timed in this run, to scale "
        "the cached closed-book times (0 = use them as cached).",
    ),
    leave_one_out: bool = typer.Option(
        True,
        "--leave-one-dataset-out/--no-leave-one-dataset-out",
        help="Also fit the shipped recipe without each dataset and score it there.",
    ),
    null: bool = typer.Option(
        True,
        "--null-check/--no-null-check",
        help="Also cross-fit the main policies on labels permuted within each dataset.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    use_ray: bool = RAY_OPTION,
    workers: int = WORKERS_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
) -> None:
    """Answer every question closed-book and with retrieval (both cached), then score policies."""
    from datetime import UTC, datetime

    import numpy as np

    from knowgate.config import RetrievalConfig
    from knowgate.errors import ConfigError, DataError
    from knowgate.evaluation.bench.report import write_report
    from knowgate.evaluation.bench.runner import dataset_record, evaluate_benchmark, run_branches
    from knowgate.evaluation.bench.summary import RunRecord
    from knowgate.evaluation.both_branches import write_both_branches
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.evaluation.reporting import fmt, fmt_interval
    from knowgate.evaluation.sampling import sample_dataset
    from knowgate.retrieval import KnowledgeBase

    with user_errors():
        check_calibration(calibration)
        if use_ray:
            from knowgate.integrations.ray import require_ray

            require_ray()
        samples = _parse_samples(sample, nested=True)
        peer_samples = {
            name: sizes[0] for name, sizes in _parse_samples(peer_sample, "--peer-sample").items()
        }
        model_config = None
        if config_file is not None:  # read first: a bad config fails before any long load
            from knowgate.config import load_config

            model_config = load_config(config_file).model
            model = model_config.source
        names = dataset_names(data)
        datasets = []
        for name in names:
            ds = load_dataset(name, limit=limit, data_dir=data_dir)
            for size in samples.pop(ds.name, ()):
                ds = sample_dataset(ds, size, seed=sample_seed)
            datasets.append(ds)
        if samples:
            raise DataError(f"--sample names datasets not in --data: {', '.join(samples)}")
        unknown = sorted(set(peer_samples) - {ds.name for ds in datasets})
        if unknown:
            raise DataError(f"--peer-sample names datasets not in --data: {', '.join(unknown)}")
        if peer_samples and not peers:
            raise ConfigError("--peer-sample needs the peers branch (drop --no-peers)")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a directory")
        started = time.perf_counter()
        knowledge_base = KnowledgeBase.load(kb)
        lm = load_language_model(model_config or model)
        with ray_batches(use_ray, lm, workers=workers, address=ray_address) as executor:
            table, phase_seconds, timings = run_branches(
                lm,
                datasets,
                knowledge_base,
                knowledge_base_dir=kb,
                k=k,
                closed_book_cache=closed_book_cache,
                retrieval_cache=retrieval_cache,
                batch_size=batch_size,
                timing_sample=timing_sample,
                peers=peers,
                peer_sample=peer_samples,
                peer_seed=sample_seed,
                peer_cache=peer_cache,
                progress=progress,
                executor=executor,
            )
        written = write_both_branches(table.to_records(), out)
        branches_seconds = time.perf_counter() - started
        result = evaluate_benchmark(
            table,
            folds=folds,
            seed=seed,
            calibration=calibration,
            bootstrap=bootstrap,
            singles=singles,
            lodo=leave_one_out,
            null=null,
            progress=progress,
        )
        command = ["knowgate", "bench", "--model", model]
        command += ["--config", str(config_file)] if config_file is not None else []
        for name in names:
            command += ["--data", name]
        command += ["--kb", str(kb), "--out", str(out), "--folds", str(folds)]
        command += ["--limit", str(limit)] if limit else []
        command += [a for s in sample for a in ("--sample", s)]
        command += [] if peers else ["--no-peers"]
        command += [a for s in peer_sample for a in ("--peer-sample", s)]
        command += (
            ["--sample-seed", str(sample_seed)] if (sample or peer_sample) and sample_seed else []
        )
        command += ["--seed", str(seed)] if seed else []
        command += ["--k", str(k)] if k else []
        command += ["--calibration", calibration] if calibration != "sigmoid" else []
        command += ["--bootstrap", str(bootstrap)] if bootstrap != 1000 else []
        command += [] if singles else ["--no-singles"]
        command += ["--timing-sample", str(timing_sample)] if timing_sample != 40 else []
        command += [] if leave_one_out else ["--no-leave-one-dataset-out"]
        command += [] if null else ["--no-null-check"]
        command += ["--ray", "--workers", str(workers)] if use_ray else []
        result.summary.run = RunRecord(
            command=shlex.join(command),
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=_machine(),
            model=model,
            datasets=dataset_record(datasets),
            knowledge_base=str(kb),
            knowledge_base_documents=len(knowledge_base),
            k=k or RetrievalConfig().k,
            closed_book_retiming=timings,
            seconds={
                **phase_seconds,
                "branches_total": round(branches_seconds, 1),
                "evaluation": round(time.perf_counter() - started - branches_seconds, 1),
            },
            both_branches=[str(p) for p in written],
            peers=None
            if table.peers is None
            else {
                str(d): int(n)
                for d, n in zip(
                    *np.unique(table.datasets[table.peers.rows], return_counts=True), strict=True
                )
            },
        )
        write_report(result, out)
    t = result.summary.targets
    seconds = time.perf_counter() - started
    if t is not None:
        console.print(
            f"[bold]{lm.model_id}[/]: {table.n} questions; always {fmt(t.always_accuracy)}, "
            f"{t.policy} ({t.operating_rule}) {fmt(t.accuracy)} at retrieval rate "
            f"{fmt(t.retrieval_rate)}, skip recall {fmt_interval(t.skip_recall)}, skip "
            f"precision {fmt_interval(t.skip_precision)}; results in {out} [{seconds:.0f} s]",
            highlight=False,
        )
    else:
        console.print(
            f"{lm.model_id}: the headline policy could not be fitted; results in {out} "
            f"[{seconds:.0f} s]"
        )
